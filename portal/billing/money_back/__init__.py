"""Money going back: refunds, failed refunds, disputes and claw-backs, purchase by purchase.

This package is the one owner of that life cycle. Nothing else creates or changes a
`Refund` or a `Dispute`, or posts the ledger entries that take a purchase's credits out
of the balance for them (claw-backs, dispute holds) or put them back. Every event goes
through here, whoever reports it:

    staff            approve · undo · retry
    the worker       send a refund whose undo window has closed
    Stripe (asked)   a refund succeeded, failed or was canceled · a charge was refunded
                     (also from Stripe's dashboard) · a dispute opened, changed or closed
    reconciliation   re-reads refunds still pending and disputes still open

Each event locks the purchase first (then its refund, then its request), so the events of
one purchase are applied one at a time, and ends in `state.settle`, which makes the
purchase's status and credits agree with its money as it stands now. It looks at the state,
not at the event, and every Stripe event is first looked up at Stripe; so events that come
twice, out of order or late leave the same books.

    money:   paid ─► refund scheduled ─► pending ─► succeeded (part or all refunded)
              │          │ undo            └─► failed ─► retried (a new attempt)
              │          └─► canceled (undo; or the bank already gave the money back)
              └─► dispute open ─► won or inquiry closed (the money stays with us)
                                └─► lost (the money went back through the bank)
    credits: spendable · clawed back (for a refund) · held (while a dispute is open or lost)

Invariants, checked by `checks.problems()` (run by `flask ledger-check`):
- refunds succeeded plus disputes lost never exceed what was paid;
- a purchase under an open or lost dispute, or refunded in full, has no spendable credits;
- no refund is sent while a dispute on its payment is open;
- a failed refund gives credits back only while the purchase's money is still with us.

Its modules, one step of the life cycle each:

    state       the refund status table, locks in their order, the money's state, settle
    approvals   staff schedule a refund, undo it, try a failed one again
    sending     the worker sends; Stripe's answer; a refund succeeds, fails or is canceled
    reported    refunds Stripe reports (also dashboard ones); the charge's refunded amount
    disputes    a dispute as Stripe says it stands
    checks      what reconciliation re-reads, and the invariants
"""
