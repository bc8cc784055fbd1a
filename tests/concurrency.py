"""Running work in threads released at the same instant (the lock tests, on both databases)."""

import threading

from portal.db import db


def run_together(app, count: int, work) -> list:
    """Run `work(index)` in `count` threads released at once; return results or errors.

    Each thread has its own app context and database session, as concurrent requests or
    workers would; the caller's session is expired afterwards so it reads what they did.
    """
    barrier = threading.Barrier(count)
    outcomes: list = [None] * count

    def run(index: int) -> None:
        with app.app_context():
            try:
                barrier.wait(timeout=30)
                outcomes[index] = work(index)
            except Exception as error:
                outcomes[index] = error
            finally:
                db.session.remove()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    db.session.expire_all()
    return outcomes
