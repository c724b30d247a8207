"""taskflow in one file, on the embedded memory broker (no server needed).

    python examples/quickstart.py

Shows priorities, retries with backoff, a failure, typed results and lifecycle events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from taskflow import App, TaskFailed, TaskStatus

app = App("quickstart")  # memory:// broker and results: in-process


@dataclass
class Invoice:
    customer: str
    cents: int


attempts: dict[str, int] = {}


@app.task(priority=9)
def urgent(message: str) -> str:
    return f"urgent: {message}"


@app.task(priority=0)
def routine(n: int) -> int:
    return n * n


@app.task(retries=3, retry_backoff=0.05, retry_jitter=False)
def flaky_payment(invoice: Invoice) -> str:
    """Fails twice (a flaky gateway), then succeeds on the third attempt."""
    attempts[invoice.customer] = attempts.get(invoice.customer, 0) + 1
    if attempts[invoice.customer] < 3:
        raise ConnectionError("payment gateway timed out")
    return f"charged {invoice.customer} {invoice.cents / 100:.2f}"


@app.task
def broken(x: int) -> int:
    raise ValueError(f"cannot handle {x}")


@app.task
async def total(invoices: list[Invoice]) -> Invoice:
    return Invoice("all", sum(i.cents for i in invoices))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    order: list[str] = []

    # Enqueue before the worker starts, so the priorities decide the order.
    routines = [routine.delay(i) for i in range(5)]
    important = urgent.delay("page the on-call")
    payment = flaky_payment.delay(Invoice("acme", 12_500))
    failing = broken.delay(7)
    summed = total.delay([Invoice("a", 100), Invoice("b", 250)])

    with app.worker(concurrency=1) as worker:
        events = worker.subscribe(buffer=100)
        print(important.get(timeout=10))
        print("squares:", [r.get(timeout=10) for r in routines])
        print(payment.get(timeout=10), f"(after {payment.info().attempts} attempts)")
        invoice = summed.get(timeout=10)
        print("typed result:", invoice)
        assert isinstance(invoice, Invoice)
        try:
            failing.get(timeout=10)
        except TaskFailed as exc:
            print(f"failed as expected: {exc.exc_type}: {exc.message}")
        assert failing.status is TaskStatus.FAILED
        while True:
            try:
                event = events.get(timeout=0.5)
            except TimeoutError:
                break
            order.append(event.task_name.rsplit(".", 1)[-1])
    print("finish order:", order)
    assert order[0] == "urgent", "priority 9 runs before priority 0"
    app.close()
    print("ok")


if __name__ == "__main__":
    main()
