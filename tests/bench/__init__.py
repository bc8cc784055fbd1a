"""The performance benchmark (`make bench`) and its smoke test (part of `make test`)."""
