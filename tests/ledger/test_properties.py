import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from portal import policy
from portal.accounts.models import User
from portal.db import db
from portal.errors import InsufficientCredits, ValidationError
from portal.jobs import services as jobs
from portal.jobs.models import FailureReason
from portal.ledger import services as ledger
from tests.factories import make_purchase, make_user


def empty_all_tables() -> None:
    db.session.remove()
    tables = [table.name for table in reversed(db.metadata.sorted_tables)]
    with db.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))  # noqa: S608 (our own names)


class FifoModel:
    """What the ledger should hold: lots in the order they were credited, oldest first."""

    def __init__(self):
        self.lots: list[list] = []
        self.charges: dict[int, list[tuple[int, int]]] = {}
        self.restored: set[int] = set()

    @property
    def balance(self) -> int:
        return sum(remaining for _, remaining in self.lots)

    def buy(self, purchase) -> None:
        self.lots.append([purchase, purchase.credits])

    def spend(self, credits: int) -> list[tuple[int, int]]:
        taken = []
        for index, lot in enumerate(self.lots):
            if credits == 0:
                break
            amount = min(lot[1], credits)
            if amount:
                lot[1] -= amount
                credits -= amount
                taken.append((index, amount))
        return taken

    def restore(self, job_id: int) -> None:
        if job_id in self.restored:
            return
        self.restored.add(job_id)
        for index, amount in self.charges[job_id]:
            self.lots[index][1] += amount


OPERATIONS = st.one_of(
    st.tuples(st.just("buy"), st.sampled_from([package.code for package in policy.PACKAGES])),
    st.tuples(st.just("spend"), st.integers(min_value=1, max_value=400)),
    st.tuples(st.just("fail"), st.integers(min_value=0, max_value=1_000)),
    st.tuples(
        st.just("claw_back"),
        st.integers(min_value=0, max_value=1_000),
        st.integers(min_value=1, max_value=100),
    ),
)


def assert_books_match(user_id: int, model: FifoModel) -> None:
    db.session.expire_all()
    assert ledger.check_books() == []
    balance = db.session.scalar(select(User.credits_balance).where(User.id == user_id))
    assert balance >= 0
    assert balance == model.balance
    for purchase, remaining in model.lots:
        assert ledger.unused_credits(purchase) == remaining, purchase.id


@seed(20260213)
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    database=None,
)
@given(steps=st.lists(OPERATIONS, min_size=10, max_size=40))
def test_ledger_agrees_with_a_simple_fifo_model(app, steps):
    empty_all_tables()
    user = make_user()
    user_id, email = user.id, user.email
    model = FifoModel()
    job_ids: list[int] = []

    for number, (operation, *arguments) in enumerate(steps):
        if operation == "buy":
            model.buy(make_purchase(user, package=arguments[0]))
        elif operation == "spend":
            [credits] = arguments
            if credits > model.balance:
                with pytest.raises(InsufficientCredits):
                    jobs.charge_job(f"job-{number}", email, "upscale", credits)
            else:
                job, created = jobs.charge_job(f"job-{number}", email, "upscale", credits)
                assert created
                model.charges[job.id] = model.spend(credits)
                job_ids.append(job.id)
        elif operation == "fail" and job_ids:
            job_id = job_ids[arguments[0] % len(job_ids)]
            job = jobs.fail_job(job_id, FailureReason.PLATFORM_ERROR, "GPU node lost")
            assert job.credits_restored
            model.restore(job_id)
        elif operation == "claw_back" and model.lots:
            lot = model.lots[arguments[0] % len(model.lots)]
            purchase, unused = lot
            if unused == 0:
                with pytest.raises(ValidationError):
                    ledger.claw_back(purchase, 1, f"claw:{number}")
                db.session.rollback()
            else:
                credits = max(1, unused * arguments[1] // 100)
                ledger.claw_back(purchase, credits, f"claw:{number}")
                db.session.commit()
                lot[1] -= credits
        assert_books_match(user_id, model)
