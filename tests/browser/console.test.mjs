// Drives the operator's console in headless Chromium against a running gate:
// signs in, watches the numbers move while a load run goes on, pauses the sale and checks the
// API reports it paused, resumes it, and keeps a screenshot.
//
//   node console.test.mjs   (env: FLASHGATE_URL, FLASHGATE_ADMIN_TOKEN, FLASHGATE_SKU,
//                            FLASHGATE_SCREENSHOT, FLASHGATE_LOAD_STARTED: a file that exists
//                            once the load run has started)
import { chromium } from "playwright-core";
import { existsSync } from "node:fs";

const base = process.env.FLASHGATE_URL;
const token = process.env.FLASHGATE_ADMIN_TOKEN;
const sku = process.env.FLASHGATE_SKU;
const screenshot = process.env.FLASHGATE_SCREENSHOT || "console.png";
const loadStarted = process.env.FLASHGATE_LOAD_STARTED;

function check(condition, message) {
  if (!condition) throw new Error(message);
  console.log("ok -", message);
}

async function until(what, probe, timeoutMs = 30000) {
  const started = Date.now();
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() - started > timeoutMs) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 200));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const requests = [];
  page.on("request", (request) => requests.push(request.url()));

  await page.goto(base + "/console");
  check(await page.locator("#login").isVisible(), "the page loads without a token and asks for one");

  await page.fill("#token", "not-the-token-0123456789-0123456789");
  await page.click("#sign-in");
  await until("a refused token", async () => (await page.textContent("#login-error")).includes("refused"));
  check(await page.locator("#login").isVisible(), "a wrong token is refused");

  await page.fill("#token", token);
  await page.click("#sign-in");
  const card = page.locator(`section.sale[data-sku="${sku}"]`);
  await card.waitFor({ timeout: 15000 });
  check(true, "signed in: the sale's card shows");
  check(requests.every((url) => !url.includes(token)), "the token never appears in a URL");

  const number = async (name) => {
    const text = await card.locator(`.stat[data-name="${name}"] .value`).textContent();
    return Number(text.replace(/[^0-9.]/g, "")) || 0;
  };
  const stockBefore = await number("redis_stock");
  await until("the load run", async () => !loadStarted || existsSync(loadStarted), 60000);
  await until("holds to be counted", async () => (await number("holds_total")) > 0, 60000);
  await until("stock to move", async () => (await number("redis_stock")) !== stockBefore, 60000);
  check(true, "the numbers move during the load run");
  await until("a non-zero rate", async () => (await number("held_per_s")) > 0 || (await number("sold_out_per_s")) > 0, 30000);
  // A few more seconds of the run, so that the charts have a shape in the screenshot.
  await new Promise((r) => setTimeout(r, 6000));
  await page.screenshot({ path: screenshot, fullPage: true });
  check(true, "screenshot kept: " + screenshot);
  const scale = await card.locator('[data-name="chart-held"] .hint').textContent();
  check(/top of the chart [0-9.,]+\/s, bottom 0/.test(scale), "a chart says its scale: " + scale);
  // The gate keeps the charts' five minutes: a console opened now still draws the run.
  const late = await browser.newPage();
  await late.goto(base + "/console");
  await late.fill("#token", token);
  await late.click("#sign-in");
  const lateCard = late.locator(`section.sale[data-sku="${sku}"]`);
  await lateCard.waitFor({ timeout: 15000 });
  const lateScale = await lateCard.locator('[data-name="chart-held"] .hint').textContent();
  const top = Number((lateScale.match(/top of the chart ([0-9.,]+)\/s/) || ["", "0"])[1].replace(/,/g, ""));
  check(top > 1, "a console opened after the holds still charts them: " + lateScale);
  await late.close();
  // The badge follows the stock: shown exactly when Redis has none left.
  const soldOut = await card.locator('[data-name="sold-out"]').count();
  const left = await number("redis_stock");
  check((left === 0) === (soldOut === 1), `the sold-out badge (${soldOut}) matches the stock left (${left})`);

  // Pause, resume and restock ask first: a framed or mistaken click changes nothing.
  const questions = [];
  page.once("dialog", (dialog) => { questions.push(dialog.message()); dialog.dismiss(); });
  await card.locator('button[data-action="pause"]').click();
  await until("the pause question", async () => questions.length === 1);
  const untouched = await (await fetch(`${base}/v1/skus/${sku}`)).json();
  check(untouched.state === "open", "pause answered 'cancel' leaves the sale open: " + questions[0]);
  page.on("dialog", (dialog) => { questions.push(dialog.message()); dialog.accept(); });
  await card.locator('button[data-action="pause"]').click();
  await until("the pause answer", async () => (await page.textContent("#answer")).includes("→ 200"));
  const paused = await (await fetch(`${base}/v1/skus/${sku}`)).json();
  check(paused.state === "paused", "after pressing pause the API reports the sale paused");
  await until("the card to show paused", async () => (await card.locator('[data-name="state"]').textContent()).includes("paused"));

  await card.locator('button[data-action="resume"]').click();
  await until("the resume answer", async () => (await page.textContent("#answer")).includes('"state": "open"'));
  const resumed = await (await fetch(`${base}/v1/skus/${sku}`)).json();
  check(resumed.state === "open", "after pressing resume the API reports the sale open");
  await until("the audit verdict", async () => (await card.locator('[data-name="audit"]').textContent()).startsWith("Audit:"));
} finally {
  await browser.close();
}
