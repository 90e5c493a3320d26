// The Decision Desk page. It decides nothing: it shows the tenant's approvals from the public /v1 routes, keeps
// them current from the event stream, and sends an approver's decision. No framework and no build step; every
// value from the server is put into the page as text (never as HTML), because contexts come from agents.
'use strict';

(function () {
  const EVENT_TYPES = 'approval.required,approval.voted,approval.resolved,approval.expired';
  const PAGE_SIZE = 100;
  // The stream sends a heartbeat at least every 15 s; silence for longer than this means the connection is gone.
  const STREAM_SILENCE_MS = 45000;

  const state = {
    // Signed in: {subject, role, tenant, expiresAt, token} (token: a pasted API token, else null: the cookie).
    session: null,
    lastEventId: null,
    streamAbort: null,
    pending: new Map(), // approvalId -> {approval, card}
    refreshing: false,
    refreshAgain: false,
    refreshTimer: null,
    historyCursor: null,
    historyStale: true,
    historyGen: 0,
    clockSkewMs: 0,
  };

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------------------------------------------------
  // DOM helpers: elements with text children only.

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(typeof c === 'string' ? document.createTextNode(c) : c);
    }
    return e;
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function announce(text) {
    const a = $('announce');
    a.textContent = '';
    // A fresh text node after a tick, so screen readers announce a repeated message too.
    setTimeout(() => { a.textContent = text; }, 50);
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    show(n, !!text);
  }

  // ------------------------------------------------------------------------------------------------------------
  // Talking to kla.

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.message) || ('HTTP ' + status));
      this.status = status;
      this.body = body;
    }
  }

  function authHeaders() {
    const h = {};
    const s = state.session;
    if (s && s.token) {
      h['authorization'] = 'Bearer ' + s.token;
      h['x-tenant-id'] = s.tenant;
    } else {
      // Signed in by the cookie: kla asks this header of every request that may change state (it cannot be sent
      // by another site's page), and takes the tenant from the session.
      h['x-kla-desk'] = '1';
    }
    return h;
  }

  function randomKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  async function api(method, path, body, extraHeaders) {
    const headers = Object.assign({ accept: 'application/json' }, authHeaders(), extraHeaders || {});
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const r = await fetch(path, init);
    noteClock(r);
    let json = null;
    try {
      json = await r.json();
    } catch (_) {
      json = null;
    }
    if (r.status === 401 && state.session) {
      signedOut('Your sign-in has ended (' + ((json && json.message) || 'unauthorized') + '). Sign in again.');
    }
    if (!r.ok) throw new HttpError(r.status, json);
    return json;
  }

  // Times left are counted against kla's clock, not this device's.
  function noteClock(r) {
    const d = Date.parse(r.headers.get('date') || '');
    if (!Number.isNaN(d)) {
      const skew = d - Date.now();
      state.clockSkewMs = Math.abs(skew) > 2000 ? skew : 0;
    }
  }

  function now() {
    return Date.now() + state.clockSkewMs;
  }

  // ------------------------------------------------------------------------------------------------------------
  // Sign-in.

  async function start() {
    wire();
    setInterval(tick, 1000);
    const m = /(?:^#|&)code=([^&]+)/.exec(location.hash);
    if (m) {
      // The code is single use; drop it from the address bar and the history before anything else.
      history.replaceState(null, '', location.pathname + location.search);
      let code;
      try {
        code = decodeURIComponent(m[1]);
      } catch (_) {
        code = m[1];
      }
      const r = await fetch('/desk/session', {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'x-kla-desk': '1', accept: 'application/json' },
        body: JSON.stringify({ code }),
        credentials: 'same-origin',
        cache: 'no-store',
      });
      const body = await r.json().catch(() => null);
      if (r.ok) {
        signedIn(Object.assign(body, { token: null }));
        return;
      }
      const existing = await currentSession();
      if (existing) {
        signedIn(existing);
        notice('That sign-in link could not be used (' + ((body && body.message) || r.status) +
          '); you are still signed in.');
        return;
      }
      showSignin('That sign-in link could not be used: ' + ((body && body.message) || ('HTTP ' + r.status)));
      return;
    }
    const existing = await currentSession();
    if (existing) signedIn(existing);
    else showSignin(null);
  }

  async function currentSession() {
    try {
      const r = await fetch('/desk/session', { credentials: 'same-origin', cache: 'no-store' });
      if (!r.ok) return null;
      return Object.assign(await r.json(), { token: null });
    } catch (_) {
      return null;
    }
  }

  // The claims of a pasted token, read only to label the page and pick its tenant (kla verifies the token).
  function tokenClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(part + '='.repeat((4 - (part.length % 4)) % 4));
      return JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    } catch (_) {
      return null;
    }
  }

  async function pasteToken(ev) {
    ev.preventDefault();
    const token = $('token-input').value.trim().replace(/^Bearer\s+/i, '');
    const claims = tokenClaims(token);
    if (!claims) {
      showSignin('That is not a token (a JWT has three parts separated by dots).');
      return;
    }
    let tenant = $('tenant-input').value.trim();
    const tenants = Array.isArray(claims.tenants) ? claims.tenants : [];
    if (!tenant && tenants.length === 1) tenant = tenants[0];
    if (!tenant) {
      showSignin('Give the tenant: the token lists ' + (tenants.length ? tenants.join(', ') : 'no tenant') + '.');
      $('tenant-input').focus();
      return;
    }
    const expiresAt = typeof claims.exp === 'number' ? new Date(claims.exp * 1000).toISOString() : null;
    state.session = { subject: String(claims.sub || '?'), role: String(claims.role || '?'), tenant, expiresAt, token };
    try {
      await api('GET', '/v1/approvals?status=PENDING&limit=1');
    } catch (e) {
      state.session = null;
      showSignin('kla refused the token: ' + e.message);
      return;
    }
    $('token-input').value = '';
    signedIn(state.session);
  }

  function showSignin(message) {
    stopStream();
    state.session = null;
    show($('desk'), false);
    show($('who'), false);
    show($('signout'), false);
    show($('signin'), true);
    setLive('off');
    notice(message);
    $('token-input').focus();
  }

  function signedIn(session) {
    state.session = session;
    notice(null);
    const who = $('who');
    who.textContent = '';
    who.append(
      el('span', { class: 'subject', text: session.subject }),
      ' · ' + session.role + ' · tenant ',
      el('span', { class: 'tenant', text: session.tenant }),
    );
    if (session.expiresAt) {
      who.append(' · until ' + new Date(session.expiresAt).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }));
    }
    show(who, true);
    show($('signout'), true);
    show($('signin'), false);
    show($('desk'), true);
    state.pending.clear();
    $('pending-list').textContent = '';
    state.historyStale = true;
    selectTab('pending', false);
    startStream();
    refreshPending();
  }

  function signedOut(message) {
    if (!state.session) return;
    showSignin(message);
  }

  async function signOut() {
    const s = state.session;
    if (s && !s.token) {
      await fetch('/desk/logout', { method: 'POST', headers: { 'x-kla-desk': '1' }, credentials: 'same-origin' })
        .catch(() => null);
    }
    showSignin('Signed out.');
  }

  // ------------------------------------------------------------------------------------------------------------
  // The event stream (server-sent events read with fetch, so a pasted token can be sent as a header).

  function setLive(s) {
    const live = $('live');
    if (live.dataset.state === s) return;
    live.dataset.state = s;
    live.textContent = { live: 'Live', connecting: 'Connecting…', off: 'Not connected' }[s] || s;
  }

  function stopStream() {
    if (state.streamAbort) state.streamAbort.abort();
    state.streamAbort = null;
  }

  async function startStream() {
    stopStream();
    const ctrl = new AbortController();
    state.streamAbort = ctrl;
    let backoff = 1000;
    while (!ctrl.signal.aborted && state.session) {
      setLive('connecting');
      try {
        const headers = Object.assign({ accept: 'text/event-stream' }, authHeaders());
        if (state.lastEventId) headers['last-event-id'] = state.lastEventId;
        const r = await fetch('/v1/events?types=' + encodeURIComponent(EVENT_TYPES), {
          headers, signal: ctrl.signal, credentials: 'same-origin', cache: 'no-store',
        });
        if (r.status === 401) {
          const body = await r.json().catch(() => null);
          signedOut('Your sign-in has ended (' + ((body && body.message) || 'unauthorized') + '). Sign in again.');
          return;
        }
        if (!r.ok || !r.body) {
          const body = await r.json().catch(() => null);
          throw new HttpError(r.status, body);
        }
        setLive('live');
        backoff = 1000;
        // Whatever happened while no stream was open is in the list.
        scheduleRefresh(0);
        await readStream(r.body, ctrl);
      } catch (e) {
        if (ctrl.signal.aborted) return;
        if (e instanceof HttpError && e.status === 403) {
          notice('The live stream is refused: ' + e.message);
        }
      }
      if (ctrl.signal.aborted) return;
      setLive('off');
      await new Promise((res) => setTimeout(res, backoff));
      backoff = Math.min(backoff * 2, 30000);
    }
  }

  async function readStream(body, ctrl) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let ev = { type: 'message', data: [], id: null };
    let silence = null;
    const watch = () => {
      clearTimeout(silence);
      silence = setTimeout(() => reader.cancel().catch(() => null), STREAM_SILENCE_MS);
    };
    ctrl.signal.addEventListener('abort', () => clearTimeout(silence), { once: true });
    watch();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        watch();
        buf += decoder.decode(value, { stream: true });
        for (;;) {
          const i = buf.search(/[\r\n]/);
          if (i < 0) break;
          // A CR at the end of what has arrived may be the first half of a CRLF: wait for the next chunk.
          if (buf[i] === '\r' && i + 1 === buf.length) break;
          const line = buf.slice(0, i);
          buf = buf.slice(i + (buf[i] === '\r' && buf[i + 1] === '\n' ? 2 : 1));
          if (line === '') {
            if (ev.id !== null) state.lastEventId = ev.id;
            if (ev.data.length) onEvent(ev.type, ev.data.join('\n'));
            ev = { type: 'message', data: [], id: null };
            continue;
          }
          if (line[0] === ':') continue; // heartbeat
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? '' : line.slice(c + 1);
          if (val[0] === ' ') val = val.slice(1);
          if (field === 'data') ev.data.push(val);
          else if (field === 'event') ev.type = val;
          else if (field === 'id' && !val.includes('\0')) ev.id = val;
        }
      }
    } finally {
      clearTimeout(silence);
    }
  }

  function onEvent(type, data) {
    let msg = null;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      return;
    }
    const d = (msg && msg.data) || {};
    switch (type) {
      case 'approval.required':
        announce('New approval: ' + (d.action || '') + ' by ' + (d.agentName || d.agentId || 'an agent'));
        scheduleRefresh(0);
        if (d.approvalId) expectPending(d.approvalId, 1);
        break;
      case 'approval.voted':
        scheduleRefresh(0);
        break;
      case 'approval.resolved':
      case 'approval.expired':
        if (d.approvalId && state.pending.has(d.approvalId)) {
          const by = d.resolvedBy ? ' by ' + d.resolvedBy.subject : '';
          removeCard(d.approvalId);
          announce((d.action || 'An approval') + ': ' + String(d.status || 'resolved').toLowerCase() + by);
        }
        state.historyStale = true;
        if (!$('panel-history').hidden) loadHistory(true);
        scheduleRefresh(0);
        break;
      case 'resync_required':
        // The stream restarted from its head: the list is the truth.
        state.historyStale = true;
        scheduleRefresh(0);
        break;
      default:
        break;
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // The pending list. Refreshes are serialised and coalesced: one runs at a time and, if events came during it,
  // one more runs after it, so the last refresh always starts after the last event.

  // The stream announces an approval as soon as its entry is durable; the list is read from the index, which may
  // trail it by a moment on a busy server. Until the announced approval is listed (or resolved), look again.
  function expectPending(id, attempt) {
    setTimeout(() => {
      if (!state.session || state.pending.has(id) || attempt > 5) return;
      scheduleRefresh(0);
      expectPending(id, attempt + 1);
    }, 500 * attempt);
  }

  function scheduleRefresh(delay) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(refreshPending, delay || 0);
  }

  async function refreshPending() {
    if (!state.session) return;
    if (state.refreshing) {
      state.refreshAgain = true;
      return;
    }
    state.refreshing = true;
    try {
      const page = await api('GET', '/v1/approvals?status=PENDING&limit=' + PAGE_SIZE);
      renderPending(page);
    } catch (e) {
      if (!(e instanceof HttpError && e.status === 401)) notice('Could not load the approvals: ' + e.message);
    } finally {
      state.refreshing = false;
      if (state.refreshAgain) {
        state.refreshAgain = false;
        scheduleRefresh(0);
      }
    }
  }

  function renderPending(page) {
    const list = $('pending-list');
    const approvals = (page.approvals || []).filter((a) => a.status === 'PENDING');
    const seen = new Set();
    let prev = null;
    for (const a of approvals) {
      seen.add(a.approvalId);
      let entry = state.pending.get(a.approvalId);
      if (!entry) {
        entry = { approval: a, card: pendingCard(a) };
        state.pending.set(a.approvalId, entry);
      } else {
        // Kept in place, so a comment being typed and the focus survive a refresh.
        entry.approval = a;
        updateVotes(entry.card, a);
      }
      const want = prev ? prev.nextSibling : list.firstChild;
      if (want !== entry.card) list.insertBefore(entry.card, want);
      prev = entry.card;
    }
    for (const id of Array.from(state.pending.keys())) {
      if (!seen.has(id)) removeCard(id);
    }
    const total = page.counts && typeof page.counts.PENDING === 'number' ? page.counts.PENDING : approvals.length;
    $('count-pending').textContent = total ? '(' + total + ')' : '';
    show($('pending-empty'), approvals.length === 0);
    const more = $('pending-more');
    more.textContent = total > approvals.length
      ? 'Showing the ' + approvals.length + ' oldest of ' + total + ' pending approvals.' : '';
    show(more, total > approvals.length);
    tick();
  }

  function removeCard(id) {
    const entry = state.pending.get(id);
    if (!entry) return;
    state.pending.delete(id);
    const card = entry.card;
    const hadFocus = card.contains(document.activeElement);
    const next = card.nextElementSibling || card.previousElementSibling;
    card.remove();
    if (hadFocus) {
      // Keyboard users keep their place: the next approval, or the list itself.
      const target = next ? next.querySelector('textarea') : $('panel-pending');
      if (target) target.focus();
    }
    const n = state.pending.size;
    $('count-pending').textContent = n ? '(' + n + ')' : '';
    show($('pending-empty'), n === 0);
  }

  // ------------------------------------------------------------------------------------------------------------
  // Cards.

  function agentLabel(a) {
    const ag = a.agent || {};
    return ag.name || a.agentId || ag.id || 'unknown agent';
  }

  function fmtTime(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function fmtLeft(ms) {
    if (ms <= 0) return 'timing out';
    const s = Math.floor(ms / 1000);
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const sec = s % 60;
    if (h > 0) return h + 'h ' + String(m).padStart(2, '0') + 'm left';
    if (m > 0) return m + 'm ' + String(sec).padStart(2, '0') + 's left';
    return sec + 's left';
  }

  function tick() {
    for (const t of document.querySelectorAll('time[data-expires]')) {
      const left = Date.parse(t.dataset.expires) - now();
      t.textContent = fmtLeft(left);
      t.classList.toggle('urgent', left < 60000);
    }
  }

  // The context as rows of (dotted path, value): nested objects and lists are spelled out, never shown as JSON.
  function contextRows(value, prefix, rows, depth) {
    const MAX_ROWS = 200;
    if (rows.length >= MAX_ROWS) return rows;
    if (value !== null && typeof value === 'object' && depth < 8) {
      const isList = Array.isArray(value);
      const keys = isList ? value.map((_, i) => i) : Object.keys(value);
      if (keys.length === 0) {
        rows.push([prefix || '(context)', isList ? '(empty list)' : '(empty)', 'muted']);
        return rows;
      }
      if (isList && value.every((v) => v === null || typeof v !== 'object')) {
        rows.push([prefix, value.map(scalar).join(', '), null]);
        return rows;
      }
      for (const k of keys) {
        const path = isList ? prefix + '[' + k + ']' : (prefix ? prefix + '.' + k : String(k));
        contextRows(value[k], path, rows, depth + 1);
        if (rows.length >= MAX_ROWS) {
          rows.push(['…', 'more fields not shown', 'muted']);
          break;
        }
      }
      return rows;
    }
    if (value !== null && typeof value === 'object') {
      rows.push([prefix, '(nested too deep to show)', 'muted']);
      return rows;
    }
    rows.push([prefix || '(value)', scalar(value), value === null || value === '' ? 'muted' : null]);
    return rows;
  }

  function scalar(v) {
    if (v === null) return 'null';
    if (v === '') return '(empty text)';
    return String(v);
  }

  function contextTable(ctx) {
    const rows = contextRows(ctx || {}, '', [], 0);
    const body = el('tbody');
    for (const [k, v, cls] of rows) {
      body.append(el('tr', {}, el('th', { scope: 'row', text: k }), el('td', { class: cls, text: v })));
    }
    return el('table', { class: 'context' }, el('caption', { class: 'visually-hidden', text: 'Context' }), body);
  }

  // The whole call a proxied action forwards (what the approval binds): request line, significant headers, body.
  function callView(tool) {
    if (!tool || typeof tool !== 'object' || !tool.method || !tool.path) return null;
    const view = { request: tool.method + ' ' + tool.path + (tool.query ? '?' + tool.query : '') };
    if (tool.headers && typeof tool.headers === 'object') view.headers = tool.headers;
    const b = tool.body;
    if (b && typeof b === 'object') {
      if (b.json !== undefined) view.body = b.json;
      else if (typeof b.text === 'string') view.body = b.text;
      else view.body = b.bytes + ' bytes, not shown (sha256 ' + b.sha256 + ')';
      if (b.contentType) view['content type'] = b.contentType;
    }
    const t = contextTable(view);
    t.classList.add('call');
    return [el('h4', { text: 'The call' }), t];
  }

  function rulesList(a) {
    const rules = Array.isArray(a.matchedRules) ? a.matchedRules : [];
    const ul = el('ul', { class: 'rules' });
    for (const r of rules) {
      ul.append(el('li', { class: r.shadow ? 'shadow' : null },
        el('code', { class: 'reason-code', text: r.reasonCode || '' }),
        r.message ? el('span', { class: 'rule-message', text: r.message }) : null,
        el('span', { class: 'rule-id', text: (r.pack ? r.pack + ' / ' : '') + (r.id || '') + (r.shadow ? ' (shadow)' : '') }),
      ));
    }
    if (!rules.length) {
      for (const c of a.reasonCodes || []) ul.append(el('li', {}, el('code', { class: 'reason-code', text: c })));
    }
    return ul;
  }

  function reasonOf(a) {
    const rules = Array.isArray(a.matchedRules) ? a.matchedRules : [];
    const r = rules.find((x) => !x.shadow && x.message) || rules.find((x) => !x.shadow);
    return r ? (r.message || r.reasonCode) : (a.reasonCodes || []).join(', ');
  }

  function metaList(a, extra) {
    const dl = el('dl', { class: 'meta' });
    const add = (k, v) => {
      if (v === null || v === undefined || v === '') return;
      dl.append(el('div', {}, el('dt', { text: k }), el('dd', { text: String(v) })));
    };
    const ag = a.agent || {};
    add('Agent', agentLabel(a) + (ag.version !== undefined ? ' v' + ag.version : '') + ' (' + (a.agentId || ag.id || '?') + ')');
    if (a.requestedBy) add('Asked by', a.requestedBy.subject + ' (' + a.requestedBy.role + ')');
    add('Asked at', fmtTime(a.createdAt));
    if (a.tool && typeof a.tool === 'object') add('Tool', a.tool.name || a.tool.id || '');
    add('Execution', a.executionId);
    add('Tool call', a.toolCallId);
    for (const [k, v] of extra || []) add(k, v);
    add('Approval', a.approvalId);
    return dl;
  }

  function votesText(a) {
    const n = Array.isArray(a.votes) ? a.votes.length : 0;
    const m = a.approvers || 1;
    if (m <= 1) return null;
    return n + ' of ' + m + ' approvals' + (n ? ' (' + a.votes.map((v) => v.subject).join(', ') + ')' : '');
  }

  function updateVotes(card, a) {
    const v = card.querySelector('.votes');
    const text = votesText(a);
    if (v) {
      v.textContent = text || '';
      show(v, !!text);
    }
  }

  function pendingCard(a) {
    const id = a.approvalId;
    const headId = 'h-' + id;
    const commentId = 'c-' + id;
    const what = a.action + ' by ' + agentLabel(a);
    const err = el('p', { class: 'card-error', role: 'alert', hidden: true });
    const approve = el('button', { type: 'submit', class: 'approve', value: 'APPROVED', 'aria-label': 'Approve ' + what, text: 'Approve' });
    const deny = el('button', { type: 'submit', class: 'deny', value: 'DENIED', 'aria-label': 'Deny ' + what, text: 'Deny' });
    const comment = el('textarea', { id: commentId, name: 'comment', rows: 2, maxlength: 2000, spellcheck: 'true' });
    const form = el('form', { class: 'decide', 'aria-label': 'Decide ' + what },
      el('label', { for: commentId, text: 'Comment (optional)' }),
      comment,
      el('div', { class: 'buttons' }, approve, deny),
      err,
    );
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      const decision = ev.submitter && ev.submitter.value === 'DENIED' ? 'DENIED' : 'APPROVED';
      decide(id, decision, comment.value.trim(), { form, err, buttons: [approve, deny], card });
    });
    const timeout = a.onTimeout === 'allow' ? 'then allowed' : 'then blocked';
    const votes = el('p', { class: 'votes', hidden: true });
    const card = el('li', { class: 'card pending', 'data-approval-id': id, 'data-status': 'PENDING' },
      el('article', { 'aria-labelledby': headId },
        el('header', { class: 'card-head' },
          el('h3', { id: headId },
            el('span', { class: 'action', text: a.action }),
            el('span', { class: 'agent', text: ' by ' + agentLabel(a) }),
          ),
          el('p', { class: 'left' },
            el('time', { datetime: a.expiresAt, 'data-expires': a.expiresAt, title: 'Expires ' + fmtTime(a.expiresAt) }),
            el('span', { class: 'on-timeout', text: ', ' + timeout }),
          ),
        ),
        el('p', { class: 'reason', text: reasonOf(a) }),
        votes,
        el('h4', { text: 'Context' }),
        contextTable(a.context),
        ...(callView(a.tool) || []),
        el('h4', { text: 'Matched rules' }),
        rulesList(a),
        el('details', { class: 'more-meta' }, el('summary', { text: 'Details' }), metaList(a)),
        form,
      ),
    );
    updateVotes(card, a);
    return card;
  }

  function historyCard(a) {
    const headId = 'hh-' + a.approvalId;
    const status = String(a.status || '');
    const by = a.resolvedBy ? a.resolvedBy.subject + ' (' + a.resolvedBy.role + ')' : (status === 'EXPIRED' ? 'timeout' : '');
    return el('li', { class: 'card resolved', 'data-approval-id': a.approvalId, 'data-status': status },
      el('article', { 'aria-labelledby': headId },
        el('header', { class: 'card-head' },
          el('h3', { id: headId },
            el('span', { class: 'action', text: a.action }),
            el('span', { class: 'agent', text: ' by ' + agentLabel(a) }),
          ),
          el('p', { class: 'status status-' + status.toLowerCase(), text: status.toLowerCase() }),
        ),
        el('p', { class: 'reason', text: reasonOf(a) }),
        a.comment ? el('blockquote', { class: 'comment', text: a.comment }) : null,
        el('dl', { class: 'meta' },
          el('div', {}, el('dt', { text: 'Resolved' }), el('dd', { text: fmtTime(a.resolvedAt) + (by ? ' by ' + by : '') })),
          el('div', {}, el('dt', { text: 'Outcome' }), el('dd', { text: a.finalDecision || '' })),
        ),
        el('details', { class: 'more-meta' }, el('summary', { text: 'Context and details' }),
          contextTable(a.context), rulesList(a), metaList(a, [['Votes', votesText(a)]])),
      ),
    );
  }

  // ------------------------------------------------------------------------------------------------------------
  // Deciding.

  async function decide(id, decision, comment, ui) {
    ui.buttons.forEach((b) => { b.disabled = true; });
    show(ui.err, false);
    const body = { decision };
    if (comment) body.comment = comment;
    try {
      const a = await api('POST', '/v1/approvals/' + encodeURIComponent(id) + '/decision', body,
        { 'idempotency-key': 'desk-' + randomKey() });
      const verb = decision === 'APPROVED' ? 'Approved' : 'Denied';
      if (a && a.status === 'PENDING') {
        const entry = state.pending.get(id);
        if (entry) entry.approval = a;
        updateVotes(ui.card, a);
        ui.err.textContent = 'Your approval is recorded; more approvers are needed.';
        show(ui.err, true);
        ui.buttons.forEach((b) => { b.disabled = false; });
      } else {
        announce(verb + ' ' + (a ? a.action : ''));
        removeCard(id);
      }
      state.historyStale = true;
    } catch (e) {
      ui.buttons.forEach((b) => { b.disabled = false; });
      let text = e.message;
      if (e instanceof HttpError && e.status === 403) {
        text = 'Not allowed: ' + e.message;
      } else if (e instanceof HttpError && e.status === 409) {
        const other = e.body && e.body.approval;
        text = other && other.status !== 'PENDING'
          ? 'Already ' + String(other.status).toLowerCase() + (other.resolvedBy ? ' by ' + other.resolvedBy.subject : '') + '.'
          : 'Conflict: ' + e.message;
        if (other && other.status !== 'PENDING') ui.buttons.forEach((b) => { b.disabled = true; });
        scheduleRefresh(3000);
      } else if (e instanceof HttpError && e.status === 401) {
        return;
      }
      ui.err.textContent = text;
      show(ui.err, true);
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // History.

  async function loadHistory(reset) {
    if (!state.session) return;
    const list = $('history-list');
    // A newer reload supersedes this one, so two reloads never interleave their cards.
    if (reset) {
      state.historyCursor = null;
      state.historyGen++;
    }
    const gen = state.historyGen;
    const status = $('history-status').value;
    const base = '/v1/approvals?limit=50' + (status ? '&status=' + encodeURIComponent(status) : '');
    try {
      // "All resolved" reads every status (the list filters one status at a time) and skips the pending ones; a
      // few pages are read at once so that a run of pending approvals does not show as an empty page.
      let added = 0;
      for (let pages = 0; pages < 5; pages++) {
        const cursor = state.historyCursor ? '&cursor=' + encodeURIComponent(state.historyCursor) : '';
        const page = await api('GET', base + cursor);
        if (gen !== state.historyGen) return;
        if (reset && pages === 0) list.textContent = '';
        for (const a of page.approvals || []) {
          if (a.status === 'PENDING') continue;
          list.append(historyCard(a));
          added++;
        }
        state.historyCursor = page.nextCursor || null;
        if (added >= 10 || !state.historyCursor) break;
      }
      state.historyStale = false;
      show($('history-more'), !!state.historyCursor);
      show($('history-empty'), list.children.length === 0);
    } catch (e) {
      if (!(e instanceof HttpError && e.status === 401)) notice('Could not load the history: ' + e.message);
    }
  }

  // ------------------------------------------------------------------------------------------------------------
  // Tabs (the WAI-ARIA tabs pattern: arrow keys move between tabs, Tab moves into the panel).

  function selectTab(name, focus) {
    for (const t of ['pending', 'history']) {
      const tab = $('tab-' + t);
      const on = t === name;
      tab.setAttribute('aria-selected', on ? 'true' : 'false');
      tab.tabIndex = on ? 0 : -1;
      show($('panel-' + t), on);
      if (on && focus) tab.focus();
    }
    if (name === 'history' && state.historyStale) loadHistory(true);
  }

  function wire() {
    $('token-form').addEventListener('submit', pasteToken);
    $('signout').addEventListener('click', signOut);
    $('tab-pending').addEventListener('click', () => selectTab('pending', false));
    $('tab-history').addEventListener('click', () => selectTab('history', false));
    for (const id of ['tab-pending', 'tab-history']) {
      $(id).addEventListener('keydown', (ev) => {
        if (!['ArrowLeft', 'ArrowRight', 'Home', 'End'].includes(ev.key)) return;
        ev.preventDefault();
        const toHistory = ev.key === 'End' || (ev.key !== 'Home' && id === 'tab-pending');
        selectTab(toHistory ? 'history' : 'pending', true);
      });
    }
    $('history-status').addEventListener('change', () => loadHistory(true));
    $('history-more').addEventListener('click', () => loadHistory(false));
  }

  document.addEventListener('DOMContentLoaded', start);
})();
