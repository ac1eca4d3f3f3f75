"""What every page of the tour must hold at a given width, checked in the browser.

Helpers, not tests: the page fits the viewport, chart text stays readable, and
axe-core (vendored in ``vendor/``, injected through the DevTools protocol, which
the Content-Security-Policy does not govern) finds nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXE = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
PHONES = (390, 360)
TABLET = 800
DESKTOP = 1280
MIN_CHART_TEXT_PX = 11
"""The smallest chart label, in CSS pixels as rendered: the body text is 16."""

Page = Any

# Every visible element whose box reaches past the viewport's right edge, and
# every region that scrolls sideways. None may: a table or chart that needs more
# room is laid out differently instead of scrolling, on its own or with the page.
# Content clipped by an ancestor that itself fits (visually hidden text) is not seen.
_OVERFLOWING = """() => {
  const width = document.documentElement.clientWidth;
  const found = [];
  const name = (element) => element.tagName.toLowerCase() +
    (element.id ? "#" + element.id : "") +
    (typeof element.className === "string" && element.className.trim()
      ? "." + element.className.trim().split(/\\s+/).join(".") : "") +
    ` "${element.textContent.trim().replace(/\\s+/g, " ").slice(0, 40)}"`;
  const clips = (element) => getComputedStyle(element).overflowX !== "visible";
  const scrolls = (element) => ["auto", "scroll"].includes(getComputedStyle(element).overflowX);
  if (document.documentElement.scrollWidth > window.innerWidth) {
    found.push(`the page is ${document.documentElement.scrollWidth}px wide`);
  }
  for (const element of document.body.querySelectorAll("*")) {
    const box = element.getBoundingClientRect();
    if (box.width === 0 || box.height === 0) continue;
    if (getComputedStyle(element).visibility === "hidden") continue;
    if (scrolls(element) && element.scrollWidth > element.clientWidth + 1) {
      found.push(`${name(element)} scrolls sideways`);
    }
    if (box.right <= width + 0.5) continue;
    let clipped = false, outermost = true;
    for (let up = element.parentElement; up && up !== document.body; up = up.parentElement) {
      const right = up.getBoundingClientRect().right;
      if (right > width + 0.5) outermost = false;
      else if (clips(up)) clipped = true;
    }
    if (!clipped && outermost) found.push(`${name(element)} ends at ${Math.round(box.right)}px`);
  }
  return found;
}"""

# Buttons, badges and the links of the main navigation whose words wrap onto
# a second line ("Sign out" once did on a phone).
_WRAPPED = """() => [
  ...document.querySelectorAll("button, .level-badge:not(.usage-bar *), nav li a")]
  .filter((element) => element.getBoundingClientRect().width > 0)
  .filter((element) => {
    const lines = new Set();
    const range = document.createRange();
    range.selectNodeContents(element);
    for (const box of range.getClientRects()) if (box.width > 0) lines.add(Math.round(box.top));
    return lines.size > 1;
  })
  .map((element) => element.textContent.trim())"""

_CHART_TEXT_SIZES = """() => [...document.querySelectorAll("svg text")]
  .filter((text) => text.getBoundingClientRect().width > 0)
  .map((text) => [text.textContent,
                  parseFloat(getComputedStyle(text).fontSize) * text.getScreenCTM().a])"""

_AXE_RUN = """async () => {
  const results = await axe.run(document, { resultTypes: ["violations"] });
  return results.violations.map((v) =>
    `${v.impact} ${v.id}: ${v.help} — ` + v.nodes.map((n) => n.target.join(" ")).join(", "));
}"""


def overflowing(page: Page) -> list[str]:
    """What sticks out past the viewport's right edge (empty when the page fits)."""
    result: list[str] = page.evaluate(_OVERFLOWING)
    return result


def small_chart_text(page: Page) -> list[tuple[str, float]]:
    """Chart labels rendered smaller than ``MIN_CHART_TEXT_PX``."""
    sizes: list[tuple[str, float]] = page.evaluate(_CHART_TEXT_SIZES)
    return [(text, round(px, 1)) for text, px in sizes if px < MIN_CHART_TEXT_PX]


def accessibility_violations(page: Page) -> list[str]:
    """axe-core's violations on the page as it stands, every impact level."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(AXE.read_text(encoding="utf-8"))
    result: list[str] = page.evaluate(_AXE_RUN)
    return result


def problems_at(page: Page, width: int) -> list[str]:
    """Everything wrong with the open page at ``width`` CSS pixels, labelled."""
    page.set_viewport_size({"width": width, "height": 800 if width < DESKTOP else 900})
    where = f"{page.url} at {width}px"
    found = [f"{where}: overflows: {item}" for item in overflowing(page)]
    found += [f"{where}: wraps: {text!r}" for text in page.evaluate(_WRAPPED)]
    found += [f"{where}: chart text {text!r} is {px}px" for text, px in small_chart_text(page)]
    found += [f"{where}: axe: {item}" for item in accessibility_violations(page)]
    return found
