"""OpenAPI 3 description of the jobs API, served at /api/v1/openapi.json."""

_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string"},
        "message": {"type": "string"},
        "field": {"type": "string", "description": "The input at fault (400 only)."},
        "balance": {"type": "integer", "description": "Current balance (402 only)."},
    },
}

# The customer's low-balance alert, beside every balance the API gives.
_LOW_BALANCE = {
    "low_balance_threshold": {
        "type": "integer",
        "minimum": 1,
        "nullable": True,
        "description": "The balance below which the customer asked to be warned by e-mail; "
        "null when they set no alert. Present wherever the balance is.",
    },
    "balance_below_threshold": {
        "type": "boolean",
        "description": "True when the customer set an alert and the balance is below it: "
        "a good moment to suggest buying credits. Present wherever the balance is.",
    },
}

_JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "external_id": {"type": "string"},
        "operation": {"type": "string"},
        "status": {"type": "string", "enum": ["running", "succeeded", "failed"]},
        "credits": {"type": "integer", "minimum": 1},
        "failure_reason": {
            "type": "string",
            "enum": ["platform_error", "invalid_input"],
            "nullable": True,
        },
        "credits_restored": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": "string", "format": "date-time", "nullable": True},
        "balance_after": {
            "type": "integer",
            "description": "The customer's balance once this call is done (answers to the "
            "calls that can change it: creating, completing and failing a job).",
        },
        **_LOW_BALANCE,
    },
}


def _response(description: str, schema: str) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_COMMON_ERRORS = {
    "400": _response("Malformed body; `field` names the input at fault.", "Error"),
    "401": _response("Missing or wrong bearer token.", "Error"),
}
_JOB_ID = [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "integer"}}]

OPENAPI_DOCUMENT = {
    "openapi": "3.0.3",
    "info": {
        "title": "Credit portal jobs API",
        "version": "1",
        "description": "Used by the image-processing platform to charge credits for jobs "
        "and report how they ended. Authenticate with `Authorization: Bearer <token>`.",
    },
    "servers": [{"url": "/api/v1"}],
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": _ERROR,
            "Job": _JOB,
            "NewJob": {
                "type": "object",
                "required": ["external_id", "customer_email", "operation", "credits"],
                "properties": {
                    "external_id": {"type": "string", "maxLength": 255},
                    "customer_email": {"type": "string", "format": "email"},
                    "operation": {"type": "string", "maxLength": 100},
                    "credits": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
                },
            },
            "NewJobs": {
                "type": "object",
                "required": ["jobs"],
                "properties": {
                    "jobs": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 100,
                        "items": {"$ref": "#/components/schemas/NewJob"},
                    }
                },
            },
            "BatchResults": {
                "type": "object",
                "properties": {
                    "results": {
                        "type": "array",
                        "description": "One answer per job asked for, in the same order.",
                        "items": {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {
                                    "type": "integer",
                                    "description": "What `POST /jobs` would have answered "
                                    "for this job: 201, 200, 400, 402, 403, 404 or 409.",
                                },
                                "job": {"$ref": "#/components/schemas/Job"},
                                "error": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {
                                    "type": "string",
                                    "description": "The input at fault, as `jobs[3].credits` "
                                    "(400 only).",
                                },
                                "balance": {"type": "integer"},
                            },
                        },
                    }
                },
            },
            "Failure": {
                "type": "object",
                "required": ["reason"],
                "properties": {
                    "reason": {"type": "string", "enum": ["platform_error", "invalid_input"]},
                    "detail": {"type": "string", "maxLength": 2000},
                },
            },
            "Balance": {
                "type": "object",
                "properties": {
                    "customer_email": {"type": "string"},
                    "balance": {"type": "integer"},
                    **_LOW_BALANCE,
                },
            },
        },
    },
    "paths": {
        "/jobs": {
            "post": {
                "summary": "Charge credits for a new job",
                "description": "Idempotent by `external_id`: a repeat returns the same job "
                "with 200 and charges nothing.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewJob"}}
                    },
                },
                "responses": {
                    "201": _response("Job created and charged.", "Job"),
                    "200": _response("The job this external_id already created.", "Job"),
                    "402": _response("Not enough credits; `balance` says how many.", "Error"),
                    "403": _response("The customer's account is terminated.", "Error"),
                    "404": _response("No customer with this e-mail.", "Error"),
                    "409": _response("external_id already used for another job.", "Error"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/jobs:batch": {
            "post": {
                "summary": "Charge credits for up to 100 new jobs in one call",
                "description": "Each job is charged as `POST /jobs` charges it, idempotent by "
                "its own `external_id`, and gets its own answer; one refused does not stop the "
                "others. The jobs of one customer are charged in the order given.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/NewJobs"}}
                    },
                },
                "responses": {
                    "200": _response("One answer per job.", "BatchResults"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "Read a job",
                "parameters": _JOB_ID,
                "responses": {
                    "200": _response("The job.", "Job"),
                    "404": _response("No such job.", "Error"),
                    "401": _COMMON_ERRORS["401"],
                },
            }
        },
        "/jobs/{job_id}/complete": {
            "post": {
                "summary": "Report that a job succeeded",
                "parameters": _JOB_ID,
                "responses": {
                    "200": _response("The job, now succeeded.", "Job"),
                    "404": _response("No such job.", "Error"),
                    "409": _response("The job already failed.", "Error"),
                    "401": _COMMON_ERRORS["401"],
                },
            }
        },
        "/jobs/{job_id}/fail": {
            "post": {
                "summary": "Report that a job failed",
                "description": "A platform_error failure returns the job's credits to the "
                "customer, once; invalid_input returns nothing.",
                "parameters": _JOB_ID,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Failure"}}
                    },
                },
                "responses": {
                    "200": _response("The job, now failed.", "Job"),
                    "404": _response("No such job.", "Error"),
                    "409": _response("The job succeeded or failed differently.", "Error"),
                    **_COMMON_ERRORS,
                },
            }
        },
        "/customers/{email}/balance": {
            "get": {
                "summary": "Read a customer's balance",
                "parameters": [
                    {"name": "email", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": _response("The balance.", "Balance"),
                    "404": _response("No customer with this e-mail.", "Error"),
                    "401": _COMMON_ERRORS["401"],
                },
            }
        },
    },
}
