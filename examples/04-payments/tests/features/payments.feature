Feature: The payments API
  A versioned payments resource. Writes are idempotent through ana when the client sends a key.

  Background:
    Given the service is running

  Rule: Create, read, replace, delete and list

    Scenario: Creating a payment
      When I create payment "p1" with amount "100.21"
      Then the status is 201
      And the header "ETag" is '"0"'
      And the header "Location" is "/v1/payments/p1"
      And the JSON at "/version" is "0"
      And the JSON at "/attributes/amount" is '"100.21"'
      And the JSON at "/attributes/currency" is '"GBP"'

    Scenario Outline: Creating an invalid payment
      When I POST "/v1/payments" with:
        """
        <body>
        """
      Then the status is 400
      And the body is a problem with status 400

      Examples:
        | body                                                                                      |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {"amount": "0"}}    |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {"amount": "-1"}}   |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {"amount": "abc"}}  |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {"amount": "1e3"}}  |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {"amount": 12}}     |
        | {"id": "p1", "type": "Payment", "organisation_id": "o", "attributes": {}}                 |
        | {"id": "", "type": "Payment", "organisation_id": "o", "attributes": {"amount": "1"}}      |
        | {"id": "p1", "type": "Payment", "organisation_id": "", "attributes": {"amount": "1"}}     |
        | {"id": "p1", "type": "Refund", "organisation_id": "o", "attributes": {"amount": "1"}}     |
        | {"id": "p1", "type": "Payment", "organisation_id": "o"                                    |
        | []                                                                                        |

    Scenario: Creating a payment with a body that is not JSON
      Given the header "Content-Type" is "text/plain"
      When I create payment "p1" with amount "1"
      Then the status is 415
      And the body is a problem with status 415

    Scenario: Creating a payment whose id exists
      Given payment "p1" exists
      When I create payment "p1" with amount "5"
      Then the status is 409
      And the body is a problem with status 409

    Scenario: Reading a payment
      Given payment "p1" exists
      When I GET "/v1/payments/p1"
      Then the status is 200
      And the header "ETag" is '"0"'
      And the JSON at "/id" is '"p1"'

    Scenario: Reading a payment that does not exist
      When I GET "/v1/payments/nope"
      Then the status is 404
      And the body is a problem with status 404

    Scenario: Replacing a payment
      Given payment "p1" exists
      When I replace payment "p1" read at version 0 with amount "7.5"
      Then the status is 200
      And the header "ETag" is '"1"'
      And the JSON at "/version" is "1"
      And the JSON at "/attributes/amount" is '"7.5"'
      When I GET "/v1/payments/p1"
      Then the JSON at "/attributes/amount" is '"7.5"'

    Scenario: Replacing a payment with an invalid one
      Given payment "p1" exists
      When I replace payment "p1" read at version 0 with amount "zero"
      Then the status is 400
      And the body is a problem with status 400

    Scenario: Replacing a payment that does not exist
      When I replace payment "nope" read at version 0 with amount "1"
      Then the status is 404

    Scenario: Replacing a payment at a stale version
      Given payment "p1" exists
      And payment "p1" was replaced at version 0
      When I replace payment "p1" read at version 0 with amount "3"
      Then the status is 409
      And the body is a problem with status 409

    Scenario: Replacing a payment whose ETag changed
      Given payment "p1" exists
      And the header "If-Match" is '"4"'
      When I replace payment "p1" read at version 0 with amount "3"
      Then the status is 412
      And the body is a problem with status 412

    Scenario: Replacing a payment whose ETag is the one read
      Given payment "p1" exists
      And the header "If-Match" is '"0"'
      When I replace payment "p1" read at version 0 with amount "3"
      Then the status is 200

    Scenario: Deleting a payment
      Given payment "p1" exists
      When I DELETE "/v1/payments/p1?version=0"
      Then the status is 204
      When I GET "/v1/payments/p1"
      Then the status is 404

    Scenario Outline: Deleting without a numeric version
      Given payment "p1" exists
      When I DELETE "/v1/payments/p1<query>"
      Then the status is 400
      And the body is a problem with status 400

      Examples:
        | query       |
        |             |
        | ?version=   |
        | ?version=x  |
        | ?version=-1 |

    Scenario: Deleting a payment that does not exist
      When I DELETE "/v1/payments/nope?version=0"
      Then the status is 404

    Scenario: Deleting a payment at a stale version
      Given payment "p1" exists
      And payment "p1" was replaced at version 0
      When I DELETE "/v1/payments/p1?version=0"
      Then the status is 409
      And there are 1 payments

    Scenario: Listing payments, oldest first
      Given payment "a" exists
      And payment "c" exists
      And payment "b" exists
      When I GET "/v1/payments"
      Then the status is 200
      And the listed ids are "a,c,b"
      When I GET "/v1/payments?from=1&size=1"
      Then the listed ids are "c"
      When I GET "/v1/payments?from=3"
      Then the listed ids are ""

    Scenario Outline: Listing with bad parameters
      When I GET "/v1/payments?<query>"
      Then the status is 400
      And the body is a problem with status 400

      Examples:
        | query     |
        | from=-1   |
        | from=x    |
        | size=-1   |
        | size=0    |
        | size=x    |
        | size=101  |

  Rule: Operations

    Scenario: Health
      When I GET "/health"
      Then the status is 200
      And the JSON at "/status" is '"ok"'

    Scenario: Metrics
      Given the header "X-Idempotency-Key" is "metrics-1"
      And payment "p1" exists
      When I GET "/metrics"
      Then the status is 200
      And the body contains "http_requests_total"
      And the body contains "ana_calls_total"

    Scenario: Admin
      Given payment "p1" exists
      And payment "p2" exists
      When I GET "/admin/repo"
      Then the status is 200
      And the JSON at "/count" is "2"
      When I DELETE "/admin/repo"
      Then the status is 204
      And there are 0 payments

    Scenario: No admin routes without --admin
      Given the service is running with "--admin=false"
      When I GET "/admin/repo"
      Then the status is 404

    Scenario: The rate limit
      Given the service is running with "--limit 2-M"
      When I GET "/v1/payments" 3 times
      Then the status is 429
      And the body is a problem with status 429
      And the header "Retry-After" is a number of seconds over 0

  Rule: Idempotent writes

    Scenario: A retried create is replayed
      Given the header "Idempotency-Key" is '"create-1"'
      When I create payment "p1" with amount "10"
      Then the status is 201
      Given the header "X-Idempotency-Key" is "create-1"
      When I create payment "p1" with amount "10"
      Then the status is 201
      And the header "Idempotent-Replayed" is "true"
      And the header "ETag" is '"0"'
      And there are 1 payments

    Scenario: A create without a key is not replayed
      When I create payment "p1" with amount "10"
      And I create payment "p1" with amount "10"
      Then the status is 409

    Scenario: A key reused for another payment
      Given the header "X-Idempotency-Key" is "create-2"
      When I create payment "p1" with amount "10"
      Given the header "X-Idempotency-Key" is "create-2"
      When I create payment "p1" with amount "11"
      Then the status is 422
      And the body is a problem with status 422

    Scenario: A retried replace is replayed, not run again
      Given payment "p1" exists
      And the header "X-Idempotency-Key" is "put-1"
      When I replace payment "p1" read at version 0 with amount "2"
      Then the status is 200
      Given the header "X-Idempotency-Key" is "put-1"
      When I replace payment "p1" read at version 0 with amount "2"
      Then the status is 200
      And the header "Idempotent-Replayed" is "true"
      And the JSON at "/version" is "1"
      When I GET "/v1/payments/p1"
      Then the header "ETag" is '"1"'

    Scenario: A retried delete is replayed
      Given payment "p1" exists
      And the header "X-Idempotency-Key" is "delete-1"
      When I DELETE "/v1/payments/p1?version=0"
      Then the status is 204
      Given the header "X-Idempotency-Key" is "delete-1"
      When I DELETE "/v1/payments/p1?version=0"
      Then the status is 204
      And the header "Idempotent-Replayed" is "true"

    Scenario: A conflict is not recorded: the retry runs again
      Given payment "p1" exists
      And payment "p1" was replaced at version 0
      And the header "X-Idempotency-Key" is "put-2"
      When I replace payment "p1" read at version 0 with amount "2"
      Then the status is 409
      Given the header "X-Idempotency-Key" is "put-2"
      When I replace payment "p1" read at version 0 with amount "2"
      Then the status is 409
      And the header "Idempotent-Replayed" is absent

  Rule: Concurrent replacements of one version: exactly one wins

    Scenario: Concurrent replacements without keys
      Given payment "p1" exists
      When 8 clients replace payment "p1" read at version 0 at once
      Then exactly one got 200 and the others 409
      And payment "p1" is at version 1

    Scenario: Concurrent replacements with keys
      Given payment "p1" exists
      When 8 clients replace payment "p1" read at version 0 at once, each with its own key
      Then exactly one got 200 and the others 409
      And payment "p1" is at version 1

  @server
  Rule: The database's availability

    Scenario: Health with the database stopped
      Given the service is running through a proxy to the database
      And payment "p1" exists
      When the database stops
      And I GET "/health"
      Then the status is 503
      And the body is a problem with status 503
      And the header "Retry-After" is a number of seconds over 0

    @postgres
    Scenario: A duplicate in flight gets 409 with Retry-After
      Given payment "p1" exists
      And the payments table is locked
      When I start replacing payment "p1" read at version 0 with key "slow-1"
      And another request replaces payment "p1" read at version 0 with key "slow-1"
      Then the status is 409
      And the body is a problem with status 409
      And the header "Retry-After" is a number of seconds over 0
      When the payments table is unlocked
      Then the first request got 200
