// Drives the Cairn console in headless Chromium against a running central (started and filled
// with sites, devices, a deployment and a rollout by central/tests/console.rs).
//
// Environment:
//   PLAYWRIGHT_CORE   path of the playwright-core package directory
//   CHROMIUM          Chromium executable (default /usr/bin/chromium)
//   CONSOLE_URL       https://127.0.0.1:PORT/ of central's REST listener (own CA: TLS errors ignored)
//   CONSOLE_TOKEN     an operator API token
//   CONSOLE_EXPECT    JSON: { sites: [{name, latitude, longitude, devices: [id]}],
//                             device: {id, os_version}, deployment: {name, sites: {site: [id]}},
//                             rollout: {id, state, downloading: id} | null }
//   CONSOLE_SCREENSHOTS  directory for page screenshots (optional)
// Exits 0 when every check passes; otherwise prints the failed check and exits 1.

import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);

const url = process.env.CONSOLE_URL;
const token = process.env.CONSOLE_TOKEN;
const expect = JSON.parse(process.env.CONSOLE_EXPECT);
const shots = process.env.CONSOLE_SCREENSHOTS;
const TIMEOUT = 15000;

const problems = [];
const step = (name) => console.log(`console test: ${name}`);

async function shot(page, name) {
  if (!shots) return;
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/** Wait until the page rendered the view for `hash` (set by console.js after each render). */
async function loaded(page, hash) {
  // (Selectors, not waitForFunction: the page's CSP forbids the eval that one needs.)
  await page.waitForSelector(`main[data-loaded=${JSON.stringify(hash)}]`, { timeout: TIMEOUT });
}

const texts = (page, selector) => page.$$eval(selector, (nodes) => nodes.map((n) => n.textContent.trim()));
const attrs = (page, selector, name) => page.$$eval(selector, (nodes, a) => nodes.map((n) => n.getAttribute(a)), name);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Expected refusals (401 for the wrong token, 403 for the operator reading the audit log)
    // are logged by Chromium as failed loads; anything else is a problem (CSP violations too).
    if (m.type() === 'error' && !/Failed to load resource: .* status of 40[13]\b/.test(m.text())) {
      problems.push(`console error: ${m.text()}`);
    }
  });

  step('no token: the login form, served with a strict CSP and no-store');
  const response = await page.goto(url);
  assert.equal(response.status(), 200);
  const headers = response.headers();
  assert.match(headers['content-type'], /^text\/html/);
  assert.match(headers['content-security-policy'], /default-src 'self'/);
  assert.equal(headers['cache-control'], 'no-store');
  await page.waitForSelector('#login');
  assert.equal(await page.$('#map'), null, 'no data is shown before sign-in');
  await shot(page, '01-login');

  step('a wrong token is refused');
  await page.fill('#token', 'not-a-token');
  await page.click('#login button[type=submit]');
  await page.locator('#login-error', { hasText: 'refused' }).waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cairn.apiToken')), null);

  step('sign in: fleet overview with one map marker per site at distinct positions');
  await page.fill('#token', token);
  await page.click('#login button[type=submit]');
  await loaded(page, '#/');
  await page.waitForSelector('#map circle.site');
  const names = await attrs(page, '#map circle.site', 'data-site');
  assert.deepEqual([...names].sort(), expect.sites.map((s) => s.name).sort(), 'one marker per site');
  const positions = await page.$$eval('#map circle.site', (nodes) => nodes.map((n) => `${n.getAttribute('cx')},${n.getAttribute('cy')}`));
  assert.equal(new Set(positions).size, positions.length, `markers at distinct positions: ${positions}`);
  for (const site of expect.sites) {
    const [cx, cy] = (await page.$eval(`#map circle.site[data-site="${site.name}"]`, (n) => [n.getAttribute('cx'), n.getAttribute('cy')])).map(Number);
    assert.ok(Math.abs(cx - (site.longitude + 180) * 2) < 0.1 && Math.abs(cy - (90 - site.latitude) * 2) < 0.1,
      `${site.name} drawn at (${cx}, ${cy}), its equirectangular position`);
  }
  const online = expect.sites.flatMap((s) => s.devices).length - expect.offline;
  assert.equal(await page.textContent('#devices-online .value'), String(online), 'devices online tile');
  assert.equal(await page.textContent('#devices-offline .value'), String(expect.offline), 'devices offline tile');
  if (expect.rollout) assert.equal(await page.textContent('#active-rollouts .value'), '1', 'active rollouts tile');
  for (const site of expect.sites) {
    const kind = await page.$eval(`#map circle.site[data-site="${site.name}"]`, (n) => n.getAttribute('class'));
    assert.match(kind, new RegExp(`\\b${site.health}\\b`), `${site.name} marker colored ${site.health}`);
  }
  await shot(page, '02-overview');

  step('live: a site created through the API appears on the map without a reload');
  const created = await context.request.post(new URL('/api/v1/sites', url).href, {
    headers: { Authorization: `Bearer ${token}` },
    data: { name: 'live-added', latitude: -33.9, longitude: 18.4, labels: {} },
  });
  assert.equal(created.status(), 201, await created.text());
  await page.waitForSelector('#map circle.site[data-site="live-added"]', { timeout: 10000 });

  step('clicking a site marker opens its page with its devices');
  const site = expect.sites.find((s) => s.devices.length > 1) || expect.sites[0];
  await page.click(`#map circle.site[data-site="${site.name}"]`);
  await loaded(page, `#/sites/${site.name}`);
  assert.equal(await page.textContent('h1'), `Site ${site.name}`);
  const listed = await attrs(page, '#site-devices tbody tr[data-device]', 'data-device');
  assert.deepEqual([...listed].sort(), [...site.devices].sort(), 'the site lists its devices');
  await shot(page, '03-site');

  step('the device page shows its OS version');
  await page.goto(`${url}#/devices/${expect.device.id}`);
  await loaded(page, `#/devices/${expect.device.id}`);
  assert.equal(await page.textContent('#device-facts dd[data-fact="os_version"]'), expect.device.os_version);
  assert.equal(await page.textContent('#device-facts dd[data-fact="id"]'), expect.device.id);
  step('the device page shows its boot attestation (a software-key device cannot attest)');
  assert.equal(await page.textContent('#device-facts dd[data-fact="attestation"]'), 'unsupported');
  step('the device page shows its host metrics and recent events');
  assert.equal(await page.textContent('#device-host dd[data-fact="cpu_percent"]'), '12.3 %');
  assert.equal(await page.textContent('#device-host dd[data-fact="memory"]'), '75.0 % of 2.0 GiB');
  assert.equal(await page.textContent('#device-host dd[data-fact="disk:/data"]'), '90.0 % of 100 B');
  assert.equal(await page.textContent('#device-host dd[data-fact="max_temperature_celsius"]'), '48.0 °C');
  assert.equal(await page.textContent('#device-host dd[data-fact="uptime_seconds"]'), '2 h 1 min');
  assert.equal(await page.textContent('#device-host dd[data-fact="clock_offset_ms"]'), '3 d behind central');
  const kinds = await attrs(page, '#device-events tbody tr[data-kind]', 'data-kind');
  assert.ok(kinds.includes('device.enrolled') && kinds.includes('device.connected'), `device events: ${kinds}`);
  // The operator token cannot read the audit log: the page says so instead of failing.
  assert.match(await page.textContent('#device-audit'), /admin/);
  await shot(page, '04-device');

  step('the deployment page shows its placement per site');
  await page.click('nav a[href="#/deployments"]');
  await loaded(page, '#/deployments');
  await page.click(`#deployments tr[data-deployment="${expect.deployment.name}"] a`);
  await loaded(page, `#/deployments/${expect.deployment.name}`);
  const placedSites = await attrs(page, '#placement tbody tr[data-site]', 'data-site');
  assert.deepEqual([...placedSites].sort(), Object.keys(expect.deployment.sites).sort(), 'placement lists the selected sites');
  for (const [siteName, hosts] of Object.entries(expect.deployment.sites)) {
    const shown = await attrs(page, `#placement tr[data-site="${siteName}"] li[data-host]`, 'data-host');
    assert.deepEqual([...shown].sort(), [...hosts].sort(), `hosts of ${siteName}`);
  }
  await shot(page, '05-deployment');

  if (expect.rollout) {
    step('the rollout page shows its state and download progress');
    await page.click('nav a[href="#/rollouts"]');
    await loaded(page, '#/rollouts');
    await page.click(`#rollouts tr[data-rollout="${expect.rollout.id}"] a`);
    await loaded(page, `#/rollouts/${expect.rollout.id}`);
    assert.equal(await page.textContent('#rollout-state'), expect.rollout.state);
    const row = `#rollout-devices tr[data-device="${expect.rollout.downloading}"]`;
    await page.waitForSelector(`${row} progress`);
    assert.match(await page.textContent(row), /downloading/);
    assert.match(await page.textContent(row), /50%/);
    await shot(page, '06-rollout');
  } else {
    console.log('console test: SKIP rollout page (no rollout: the bundle tools are missing)');
  }

  step('log out: the token is gone and the login form is back, also after a reload');
  await page.click('#logout');
  await page.waitForSelector('#login');
  assert.equal(await page.evaluate(() => sessionStorage.getItem('cairn.apiToken')), null);
  await page.reload();
  await page.waitForSelector('#login');

  assert.deepEqual(problems, [], 'no script errors or CSP violations');
  console.log('console test: PASS');
} catch (e) {
  console.error(`console test: FAIL: ${e.stack || e}`);
  for (const p of browser.contexts().flatMap((c) => c.pages())) {
    console.error(`page ${p.url()} shows: ${(await p.textContent('body').catch(() => '?')).replace(/\s+/g, ' ').slice(0, 2000)}`);
    await shot(p, 'failure').catch(() => {});
  }
  if (problems.length) console.error(`also: ${problems.join('\n')}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
