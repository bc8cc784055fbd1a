"""Journey 3: the platform charges jobs through the API; a failed one comes back by itself."""

import re

from playwright.sync_api import expect

from tests.e2e.support import (
    customer_with_starter,
    main_nav,
)


def test_platform_charges_jobs_and_a_platform_error_returns_the_credits(
    browse, live_server, platform
):
    email, page = customer_with_starter(browse, live_server)

    upscale = platform.charge(email, 4, "upscale")
    colorize = platform.charge(email, 6, "colorize")
    assert platform.complete(upscale["id"])["status"] == "succeeded"
    failed = platform.fail(colorize["id"], "GPU worker lost")
    assert failed["status"] == "failed"
    assert platform.balance(email) == 46  # 50 - 4; the 6 came back

    main_nav(page).get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Your jobs")
    colorize_row = page.get_by_role("row", name=re.compile(r"colorize"))
    expect(colorize_row).to_contain_text("Failed")
    expect(colorize_row).to_contain_text("credits returned")
    expect(colorize_row.get_by_role("cell").nth(2)).to_have_text("6")
    upscale_row = page.get_by_role("row", name=re.compile(r"upscale"))
    expect(upscale_row).to_contain_text("Succeeded")
    expect(upscale_row).not_to_contain_text("credits returned")
    browse.check(page, "jobs")

    colorize_row.get_by_role("link").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(f"Job {colorize['id']}: colorize")
    expect(
        page.get_by_text("Its 6 credits were returned to your balance automatically.")
    ).to_be_visible()
    browse.check(page, "the failed job")

    main_nav(page).get_by_role("link", name="History").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Balance history")
    rows = page.locator("table tbody tr")
    # Newest first: the automatic return, the two charges, the purchase.
    expect(rows).to_have_count(4)
    expect(rows.nth(0)).to_contain_text("Failed job: credits returned")
    expect(rows.nth(0)).to_contain_text(f"job {colorize['id']}")
    expect(rows.nth(0).get_by_role("cell").nth(2)).to_have_text("+6")
    expect(rows.nth(0).get_by_role("cell").nth(3)).to_have_text("46")
    charges = page.get_by_role("row", name=re.compile(r"Job charged"))
    expect(charges).to_have_count(2)
    expect(
        page.get_by_role("row", name=re.compile(rf"Job charged.*job {colorize['id']}"))
    ).to_contain_text("-6")
    expect(rows.nth(3)).to_contain_text("Credits bought")
    browse.check(page, "history with the charge and the return")

    main_nav(page).get_by_role("link", name="Dashboard").click()
    expect(page.locator(".balance")).to_have_text(re.compile(r"^\s*46\s+credits\s*$"))
    browse.check(page, "dashboard at 46 credits")
