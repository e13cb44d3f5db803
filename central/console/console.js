// Cairn console: a single page over central's REST API (/api/v1), polled every few seconds.
// No framework and no HTML parsing: every piece of data reaches the page as a text node or an
// attribute value, so names and messages from devices cannot inject markup.
'use strict';

(() => {
  const TOKEN_KEY = 'cairn.apiToken';
  const POLL_MS = 3000;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ACTIVE_ROLLOUT = ['running', 'paused', 'halted'];

  const main = document.getElementById('main');
  const statusLine = document.getElementById('status');
  let renderSeq = 0;
  let rendering = false;

  // ---- DOM building (text only) ----

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    append(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));
    }
  }

  function append(node, children) {
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  const link = (href, text, attrs) => el('a', { href, ...attrs }, text);
  const pill = (text, kind) => el('span', { class: `pill ${kind || ''}` }, text);
  const enc = encodeURIComponent;
  const deviceLink = (id) => link(`#/devices/${enc(id)}`, id, { 'data-device': id });
  const siteLink = (name) => link(`#/sites/${enc(name)}`, name);

  function table(headers, rows, attrs) {
    return el('table', attrs,
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', {}, h)))),
      el('tbody', {}, rows.length ? rows : el('tr', {}, el('td', { colspan: headers.length, class: 'muted' }, 'none'))));
  }

  function facts(id, pairs) {
    return el('dl', { class: 'facts', id },
      pairs.map(([key, label, value]) => [el('dt', {}, label), el('dd', { 'data-fact': key }, value ?? '—')]));
  }

  function labelsText(labels) {
    const entries = Object.entries(labels || {});
    return entries.length ? entries.map(([k, v]) => `${k}=${v}`).join(', ') : '—';
  }

  function stateKind(state) {
    if (['running', 'succeeded', 'completed', 'healthy', 'online', 'active'].includes(state)) return 'ok';
    if (['failed', 'refused', 'halted', 'aborted', 'unhealthy', 'exited', 'offline', 'revoked'].includes(state)) return 'bad';
    if (['paused', 'pending', 'restarting', 'downloading', 'installing', 'rebooting', 'verifying', 'released'].includes(state)) return 'warn';
    return '';
  }

  const onlinePill = (online) => pill(online ? 'online' : 'offline', online ? 'ok' : 'bad');

  function attestationText(a) {
    if (!a) return '—';
    const kind = { verified: 'ok', failed: 'bad', stale: 'warn', pending: 'warn' }[a.state] || '';
    return [pill(a.state, kind), a.detail ? ` ${a.detail}` : '', a.verified_at ? ` (verified ${a.verified_at})` : ''];
  }

  // ---- API ----

  class Unauthorized extends Error {}

  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) throw new Unauthorized('no token');
    const response = await fetch(`/api/v1${path}`, {
      headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' },
      cache: 'no-store',
      credentials: 'omit',
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (response.status === 401) throw new Unauthorized(body?.error?.message || 'token refused');
    if (!response.ok) throw new ApiFailure(response.status, body?.error?.message || `HTTP ${response.status}`);
    return body;
  }

  // ---- login ----

  function showLogin(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    document.getElementById('nav').hidden = true;
    document.getElementById('logout').hidden = true;
    statusLine.textContent = '';
    const form = document.getElementById('login-template').content.firstElementChild.cloneNode(true);
    form.querySelector('#login-error').textContent = message || '';
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const token = form.querySelector('#token').value.trim();
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      try {
        await api('/devices');
      } catch (e) {
        showLogin(e instanceof Unauthorized ? `Sign-in refused: ${e.message}` : `Central did not answer: ${e.message}`);
        return;
      }
      render();
    });
    main.replaceChildren(form);
    form.querySelector('#token').focus();
  }

  document.getElementById('logout').addEventListener('click', () => showLogin('Signed out.'));

  // ---- fleet overview with the map ----

  // Equirectangular projection onto a 720 x 360 viewBox: 2 units per degree.
  const project = (lat, lon) => [(lon + 180) * 2, (90 - lat) * 2];

  function siteHealth(devices) {
    const live = devices.filter((d) => d.status !== 'revoked');
    if (!live.length) return ['none', 'no devices'];
    const online = live.filter((d) => d.online).length;
    if (online === live.length) return ['ok', `${online}/${live.length} online`];
    if (online === 0) return ['bad', `0/${live.length} online`];
    return ['warn', `${online}/${live.length} online`];
  }

  function fleetMap(sites, devicesBySite) {
    const grid = [];
    for (let lon = -180; lon <= 180; lon += 30) {
      const [x] = project(0, lon);
      grid.push(svg('line', { class: 'grid', x1: x, y1: 0, x2: x, y2: 360 }));
    }
    for (let lat = -60; lat <= 60; lat += 30) {
      const [, y] = project(lat, 0);
      grid.push(svg('line', { class: lat === 0 ? 'equator' : 'grid', x1: 0, y1: y, x2: 720, y2: y }));
    }
    const markers = sites.map((site) => {
      const [x, y] = project(site.latitude, site.longitude);
      const [kind, summary] = siteHealth(devicesBySite.get(site.name) || []);
      const open = () => { location.hash = `#/sites/${enc(site.name)}`; };
      return svg('g', {},
        svg('circle', {
          class: `site ${kind}`, cx: x.toFixed(1), cy: y.toFixed(1), r: 6, tabindex: 0, role: 'link',
          'data-site': site.name, 'aria-label': `site ${site.name}: ${summary}`,
          onclick: open, onkeydown: (e) => { if (e.key === 'Enter') open(); },
        }, svg('title', {}, `${site.name}: ${summary}`)),
        svg('text', { x: (x + 9).toFixed(1), y: (y + 4).toFixed(1) }, site.name));
    });
    return svg('svg', { class: 'map', id: 'map', viewBox: '0 0 720 360', role: 'img', 'aria-label': 'map of sites' },
      svg('rect', { x: 0, y: 0, width: 720, height: 360, fill: 'none' }), grid, markers);
  }

  function tile(id, value, label) {
    return el('div', { class: 'tile', id }, el('div', { class: 'value' }, value), el('div', { class: 'label' }, label));
  }

  async function overview() {
    const [{ sites }, { devices }, { rollouts }, { deployments }] = await Promise.all([
      api('/sites'), api('/devices'), api('/rollouts'), api('/deployments'),
    ]);
    const live = devices.filter((d) => d.status !== 'revoked');
    const online = live.filter((d) => d.online).length;
    const active = rollouts.filter((r) => ACTIVE_ROLLOUT.includes(r.state)).length;
    const bySite = new Map();
    for (const d of devices) {
      if (!d.site) continue;
      if (!bySite.has(d.site)) bySite.set(d.site, []);
      bySite.get(d.site).push(d);
    }
    const siteRows = sites.map((s) => {
      const [kind, summary] = siteHealth(bySite.get(s.name) || []);
      return el('tr', { 'data-site': s.name },
        el('td', {}, siteLink(s.name)), el('td', {}, `${s.latitude.toFixed(3)}, ${s.longitude.toFixed(3)}`),
        el('td', {}, labelsText(s.labels)), el('td', {}, String(s.device_count)), el('td', {}, pill(summary, kind)));
    });
    const unplaced = live.filter((d) => !d.site);
    return [
      el('h1', {}, 'Fleet'),
      el('div', { class: 'tiles' },
        tile('devices-online', online, 'devices online'),
        tile('devices-offline', live.length - online, 'devices offline'),
        tile('active-rollouts', active, 'active rollouts'),
        tile('site-count', sites.length, 'sites'),
        tile('deployment-count', deployments.length, 'deployments')),
      fleetMap(sites, bySite),
      el('div', { class: 'legend' },
        el('span', { class: 'ok' }, 'all online'), el('span', { class: 'warn' }, 'some offline'),
        el('span', { class: 'bad' }, 'all offline'), el('span', { class: 'none' }, 'no devices')),
      el('h2', {}, 'Sites'),
      table(['Site', 'Location', 'Labels', 'Devices', 'Health'], siteRows, { id: 'sites' }),
      unplaced.length ? [el('h2', {}, 'Devices without a site'),
        table(['Device', 'Host name', 'Status', 'Online'], unplaced.map((d) => el('tr', {},
          el('td', {}, deviceLink(d.id)), el('td', {}, d.hostname), el('td', {}, d.status), el('td', {}, onlinePill(d.online)))))] : null,
    ];
  }

  // ---- site ----

  function appsSummary(apps) {
    if (!apps || !apps.apps.length) return el('span', { class: 'muted' }, 'no apps');
    return apps.apps.map((app) => {
      const services = app.status?.services || [];
      const running = services.filter((s) => s.state === 'running').length;
      const text = app.status ? `${app.name}: ${running}/${services.length} running` : `${app.name}: not reported`;
      const kind = !app.status ? 'warn' : (app.status.error ? 'bad' : (running === services.length ? 'ok' : 'warn'));
      return [pill(text, kind), ' '];
    });
  }

  async function sitePage(name) {
    const [{ site, devices: ids }, { devices }] = await Promise.all([api(`/sites/${enc(name)}`), api('/devices')]);
    const byId = new Map(devices.map((d) => [d.id, d]));
    const shown = ids.slice(0, 100);
    const apps = await Promise.all(shown.map((id) => api(`/devices/${enc(id)}/apps`).catch(() => null)));
    const rows = shown.map((id, i) => {
      const d = byId.get(id) || { id };
      return el('tr', { 'data-device': id },
        el('td', {}, deviceLink(id)), el('td', {}, d.hostname ?? ''), el('td', {}, d.status ?? ''),
        el('td', {}, onlinePill(d.online)), el('td', {}, d.os_version ?? ''), el('td', {}, appsSummary(apps[i])));
    });
    return [
      el('h1', {}, `Site ${site.name}`),
      facts('site-facts', [
        ['location', 'Location', `${site.latitude}, ${site.longitude}`],
        ['labels', 'Labels', labelsText(site.labels)],
        ['devices', 'Devices', String(ids.length)],
        ['updated_at', 'Updated', site.updated_at],
      ]),
      el('h2', {}, 'Devices'),
      table(['Device', 'Host name', 'Status', 'Online', 'OS version', 'Apps'], rows, { id: 'site-devices' }),
      ids.length > shown.length ? el('p', { class: 'muted' }, `showing ${shown.length} of ${ids.length}`) : null,
    ];
  }

  // ---- device ----

  const pct = (value) => (value === null || value === undefined ? '—' : `${value.toFixed(1)} %`);

  function bytesText(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return unit ? `${value.toFixed(1)} ${units[unit]}` : `${n} B`;
  }

  // A device's clock offset against central's (from its heartbeats).
  function clockText(ms) {
    if (ms === null) return '—';
    const abs = Math.abs(ms);
    if (abs < 1000) return 'in step with central';
    const amount = abs < 120000 ? `${(abs / 1000).toFixed(1)} s`
      : abs < 7200000 ? `${Math.round(abs / 60000)} min`
      : abs < 172800000 ? `${Math.round(abs / 3600000)} h` : `${Math.round(abs / 86400000)} d`;
    return `${amount} ${ms < 0 ? 'behind' : 'ahead of'} central`;
  }

  // The latest host metrics (device.host, null before the device's first report to central).
  function hostFacts(h) {
    if (!h) return el('p', { class: 'muted', id: 'device-host' }, 'no host metrics reported yet');
    return facts('device-host', [
      ['reported_at', 'Reported', h.reported_at],
      ['cpu_percent', 'CPU', pct(h.cpu_percent)],
      ['load1', 'Load (1 min)', h.load1.toFixed(2)],
      ['memory', 'Memory', `${pct(h.memory_used_percent)} of ${bytesText(h.memory_total_bytes)}`],
      ...h.filesystems.map((fs) => [`disk:${fs.mount_point}`, `Disk ${fs.mount_point}`, `${pct(fs.used_percent)} of ${bytesText(fs.total_bytes)}`]),
      ['max_temperature_celsius', 'Hottest sensor',
        h.max_temperature_celsius === null ? '—' : `${h.max_temperature_celsius.toFixed(1)} °C`],
      ['uptime_seconds', 'Up', `${Math.floor(h.uptime_seconds / 3600)} h ${Math.floor((h.uptime_seconds % 3600) / 60)} min`],
      ['clock_offset_ms', 'Clock', clockText(h.clock_offset_ms)],
    ]);
  }

  const severityKind = (s) => ({ info: '', warning: 'warn', error: 'bad' })[s] ?? '';

  async function devicePage(id) {
    const [{ device: d, events }, apps] = await Promise.all([api(`/devices/${enc(id)}`), api(`/devices/${enc(id)}/apps`)]);
    let audit;
    try {
      const { events } = await api('/audit?limit=500');
      const mine = events.filter((e) => e.target === id).slice(0, 20);
      audit = table(['When', 'Actor', 'Action', 'Detail'],
        mine.map((e) => el('tr', {}, el('td', {}, e.at), el('td', {}, e.actor), el('td', {}, e.action), el('td', {}, e.detail))),
        { id: 'device-audit' });
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      audit = el('p', { class: 'muted', id: 'device-audit' },
        e.status === 403 ? 'The audit log needs an admin token.' : `Audit log unavailable: ${e.message}`);
    }
    const serviceRows = [];
    for (const app of apps.apps) {
      const services = app.status?.services || [];
      if (!services.length) {
        serviceRows.push(el('tr', { 'data-app': app.name }, el('td', {}, app.name), el('td', {}, `gen ${app.generation}`),
          el('td', { colspan: 3, class: 'muted' }, app.status ? (app.status.error || 'no services reported') : 'not reported yet')));
      }
      for (const s of services) {
        serviceRows.push(el('tr', { 'data-app': app.name },
          el('td', {}, app.name), el('td', {}, `gen ${app.generation}${app.status.in_sync ? '' : ' (syncing)'}`),
          el('td', {}, s.name), el('td', {}, pill(s.state, stateKind(s.state)), ' ', s.health !== 'none' ? pill(s.health, stateKind(s.health)) : null),
          el('td', {}, s.restarts ? `${s.restarts} restarts ` : '', s.message || '')));
      }
    }
    return [
      el('h1', {}, `Device ${d.hostname || d.id}`),
      facts('device-facts', [
        ['id', 'Id', d.id],
        ['status', 'Status', pill(d.status, stateKind(d.status))],
        ['online', 'Connection', onlinePill(d.online)],
        ['os_version', 'OS version', d.os_version],
        ['desired_os', 'Desired OS', d.desired_os ? `${d.desired_os.version} (rollout ${d.desired_os.rollout_id})` : 'keep running'],
        ['agent_version', 'Agent version', d.agent_version],
        ['site', 'Site', d.site ? siteLink(d.site) : '—'],
        ['labels', 'Labels', labelsText(d.labels)],
        ['hostname', 'Host name', d.hostname],
        ['serial', 'Serial', d.serial],
        ['key_storage', 'Key storage', d.key_storage],
        ['attestation', 'Boot attestation', attestationText(d.attestation)],
        ...(d.wipe_requested_at ? [['wipe', 'Crypto-erase', d.wiped_at ? `done ${d.wiped_at}` : `ordered ${d.wipe_requested_at}, waiting for the device`]] : []),
        ['last_seen_at', 'Last seen', d.last_seen_at],
        ['cert_expires_at', 'Certificate expires', d.cert_expires_at],
        ['desired_revision', 'Desired revision', String(d.desired_revision)],
      ]),
      el('h2', {}, 'Apps'),
      el('p', { class: 'muted' }, apps.reported_at ? `reported ${apps.reported_at} (revision ${apps.reported_revision})` : 'no app report yet'),
      table(['App', 'Generation', 'Service', 'State', 'Detail'], serviceRows, { id: 'device-apps' }),
      el('h2', {}, 'Host'),
      hostFacts(d.host),
      el('h2', {}, 'Recent events'),
      table(['When', 'Severity', 'Kind', 'Message'], [...(events || [])].reverse().map((e) => el('tr', { 'data-kind': e.kind },
        el('td', {}, e.at), el('td', {}, pill(e.severity, severityKind(e.severity))), el('td', {}, e.kind), el('td', {}, e.message))),
      { id: 'device-events' }),
      el('h2', {}, 'Recent audit entries'),
      audit,
    ];
  }

  // ---- deployments ----

  const compact = (value) => JSON.stringify(value);

  async function deploymentsPage() {
    const { deployments } = await api('/deployments');
    return [
      el('h1', {}, 'Deployments'),
      table(['Deployment', 'Placement', 'Hosts', 'Updated'], deployments.map((d) => el('tr', { 'data-deployment': d.name },
        el('td', {}, link(`#/deployments/${enc(d.name)}`, d.name)), el('td', {}, el('code', {}, compact(d.placement))),
        el('td', {}, String(d.hosts)), el('td', {}, d.updated_at))), { id: 'deployments' }),
    ];
  }

  function hostItem(h) {
    const services = h.status?.services || [];
    const running = services.filter((s) => s.state === 'running').length;
    const state = !h.status ? pill('not reported', 'warn')
      : pill(`${running}/${services.length} running${h.status.in_sync ? '' : ', syncing'}`, running === services.length && h.status.in_sync ? 'ok' : 'warn');
    return el('li', { 'data-host': h.device_id }, deviceLink(h.device_id), ' ', onlinePill(h.online), ' ', state);
  }

  async function deploymentPage(name) {
    const { deployment: d } = await api(`/deployments/${enc(name)}`);
    const rows = d.sites.map((s) => el('tr', { 'data-site': s.site },
      el('td', {}, siteLink(s.site)), el('td', {}, String(s.wanted)),
      el('td', {}, el('ul', {}, s.hosts.map(hostItem))),
      el('td', {}, s.shortfall ? pill(`${s.shortfall} short`, 'bad') : pill('complete', 'ok'))));
    return [
      el('h1', {}, `Deployment ${d.name}`),
      facts('deployment-facts', [
        ['placement', 'Placement', el('code', {}, compact(d.placement))],
        ['created_by', 'Created by', d.created_by],
        ['updated_at', 'Updated', d.updated_at],
      ]),
      el('h2', {}, 'Placement per site'),
      table(['Site', 'Wanted', 'Hosts', 'Shortfall'], rows, { id: 'placement' }),
      d.hosts_elsewhere.length ? [el('h2', {}, 'Hosts outside the selected sites (being removed)'), el('ul', {}, d.hosts_elsewhere.map(hostItem))] : null,
      el('h2', {}, 'Compose file'),
      el('pre', {}, d.compose_yaml),
    ];
  }

  // ---- rollouts ----

  function countsText(counts) {
    return Object.entries(counts || {}).filter(([, n]) => n).map(([k, n]) => `${k} ${n}`).join(', ') || '—';
  }

  async function rolloutsPage() {
    const { rollouts } = await api('/rollouts');
    return [
      el('h1', {}, 'Rollouts'),
      table(['Rollout', 'Version', 'State', 'Waves released', 'Devices', 'Created'], rollouts.map((r) => el('tr', { 'data-rollout': r.id },
        el('td', {}, link(`#/rollouts/${enc(r.id)}`, r.id)), el('td', {}, r.version), el('td', {}, pill(r.state, stateKind(r.state))),
        el('td', {}, `${r.released_waves}/${r.wave_count}`), el('td', {}, countsText(r.counts)), el('td', {}, r.created_at))), { id: 'rollouts' }),
    ];
  }

  function progressCell(p) {
    if (!p) return el('span', { class: 'muted' }, '—');
    const parts = [p.phase];
    if (p.bytes_total) {
      const pct = Math.floor((100 * p.bytes_done) / p.bytes_total);
      parts.push(' ', el('progress', { max: p.bytes_total, value: p.bytes_done }), ` ${pct}%`);
      if (p.bytes_fetched) parts.push(` (${p.bytes_fetched} bytes fetched)`);
    }
    return el('span', { class: 'progress' }, parts);
  }

  async function rolloutPage(id) {
    const { rollout: r } = await api(`/rollouts/${enc(id)}`);
    const waves = r.wave_summary.map((w) => el('tr', {},
      el('td', {}, String(w.index)), el('td', {}, w.released ? 'yes' : 'no'), el('td', {}, String(w.devices)), el('td', {}, countsText(w.counts))));
    const devices = r.devices.map((d) => el('tr', { 'data-device': d.device_id },
      el('td', {}, deviceLink(d.device_id)), el('td', {}, String(d.wave)), el('td', {}, d.from_version),
      el('td', {}, pill(d.state, stateKind(d.state))), el('td', {}, progressCell(d.progress)),
      el('td', {}, d.running_version ?? '—'), el('td', {}, onlinePill(d.online)), el('td', {}, d.error)));
    return [
      el('h1', {}, `Rollout ${r.id}`),
      facts('rollout-facts', [
        ['state', 'State', el('span', { id: 'rollout-state' }, pill(r.state, stateKind(r.state)))],
        ['halt_reason', 'Halt reason', r.halt_reason],
        ['version', 'Version', r.version],
        ['bundle_sha256', 'Bundle', r.bundle_sha256],
        ['waves', 'Waves released', `${r.released_waves}/${r.wave_count}`],
        ['failure_threshold_percent', 'Halt above', `${r.failure_threshold_percent}% failed`],
        ['created_by', 'Created by', r.created_by],
        ['updated_at', 'Updated', r.updated_at],
      ]),
      el('h2', {}, 'Waves'),
      table(['Wave', 'Released', 'Devices', 'States'], waves, { id: 'rollout-waves' }),
      el('h2', {}, 'Devices'),
      table(['Device', 'Wave', 'From', 'State', 'Progress', 'Running', 'Online', 'Error'], devices, { id: 'rollout-devices' }),
    ];
  }

  // ---- routing and polling ----

  const routes = [
    [/^#?\/?$/, overview],
    [/^#\/sites\/([^/]+)$/, sitePage],
    [/^#\/devices\/([^/]+)$/, devicePage],
    [/^#\/deployments$/, deploymentsPage],
    [/^#\/deployments\/([^/]+)$/, deploymentPage],
    [/^#\/rollouts$/, rolloutsPage],
    [/^#\/rollouts\/([^/]+)$/, rolloutPage],
  ];

  async function render() {
    if (!sessionStorage.getItem(TOKEN_KEY)) {
      if (!document.getElementById('login')) showLogin();
      return;
    }
    const seq = ++renderSeq;
    rendering = true;
    document.getElementById('nav').hidden = false;
    document.getElementById('logout').hidden = false;
    const hash = location.hash || '#/';
    const match = routes.map(([re, view]) => [hash.match(re), view]).find(([m]) => m);
    try {
      let content;
      if (!match) {
        content = [el('h1', {}, 'Not found'), el('p', {}, 'No such page. '), link('#/', 'Back to the fleet')];
      } else {
        const [m, view] = match;
        content = await view(...m.slice(1).map(decodeURIComponent));
      }
      if (seq !== renderSeq) return;
      const scroll = window.scrollY;
      main.replaceChildren(...[content].flat(Infinity).filter(Boolean));
      window.scrollTo(0, scroll);
      main.dataset.loaded = hash;
      statusLine.textContent = `updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      if (seq !== renderSeq) return;
      if (e instanceof Unauthorized) {
        showLogin(`Sign in again: ${e.message}`);
      } else if (e instanceof ApiFailure && e.status === 404) {
        main.replaceChildren(el('h1', {}, 'Not found'), el('p', { class: 'error' }, e.message), link('#/', 'Back to the fleet'));
        main.dataset.loaded = hash;
      } else {
        statusLine.textContent = `central unreachable, retrying: ${e.message}`;
      }
    } finally {
      if (seq === renderSeq) rendering = false;
    }
  }

  window.addEventListener('hashchange', () => {
    main.dataset.loaded = '';
    render();
  });
  setInterval(() => {
    if (!rendering && !document.hidden && sessionStorage.getItem(TOKEN_KEY)) render();
  }, POLL_MS);
  render();
})();
