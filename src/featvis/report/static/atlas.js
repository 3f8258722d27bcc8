// featvis atlas page: builds the grid from the embedded data, opens a unit's panel on click or #id
// (inlined into index.html by featvis.report.atlas; no external resources).
const data = JSON.parse(document.getElementById('atlas-data').textContent);
const grid = document.getElementById('grid'), panel = document.getElementById('panel');
const card = document.getElementById('card-body');
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'})[c]); }
function fmt(v) {
  if (typeof v !== 'number') return esc(v ?? '–');
  return Number.isInteger(v) ? String(v) : (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));
}
// a unit's image, or a box saying it is missing from the run folder (the page's header counts them)
function picture(u, attrs) {
  return u.image ? `<img ${attrs} alt="${esc(u.label)}" src="${esc(u.image)}">`
    : '<span class="missing" title="missing from the run folder, or not a PNG image">image missing</span>';
}
// what a strip of examples is: "the 9 of the 5,000 dataset images whose spatial maximum is highest"
function examplesHeading(list, which) {
  const ex = data.examples;
  if (!ex) return `dataset examples that excite it ${which === 'highest' ? 'most' : 'least'}`;
  const of = ex.images == null ? 'the dataset images' : `the ${ex.images} dataset images`;
  return `the ${(list || []).length} of ${of} whose ${ex.ranking} is ${which}`;
}
const frag = document.createDocumentFragment();
data.units.forEach((u, i) => {
  const b = document.createElement('button');
  b.className = 'tile'; b.dataset.i = i; b.dataset.name = (u.label + ' ' + u.id).toLowerCase();
  b.innerHTML = picture(u, 'loading="lazy" decoding="async"') + `<span>${esc(u.label)}</span>`;
  b.onclick = () => { location.hash = u.id; };
  frag.appendChild(b);
});
grid.appendChild(frag);
function strip(list) {
  if (!list || !list.length) return '<p class="meta">no dataset examples (build the atlas with --dataset)</p>';
  return '<div class="strip">' + list.map(e => `<figure><img loading="lazy" src="${esc(e.patch)}" alt="">` +
    `<figcaption title="${esc(e.input ?? "")}">${fmt(e.value)} · ${esc(e.name)}</figcaption></figure>`).join('') + '</div>';
}
function show(id) {
  const u = data.units.find(x => x.id === id);
  if (!u) { panel.classList.remove('open'); return; }
  const stats = Object.entries(u.stats || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="num">${fmt(v)}</td></tr>`).join('');
  const classes = (u.classes || []).map(c => `<tr><td>${esc(c.name)}</td><td class="num">${fmt(c.value)}</td></tr>`).join('');
  card.innerHTML = `<h2>${esc(u.label)}</h2><div class="main">${picture(u, 'class="big"')}` +
    `<div><h3>statistics</h3><table>${stats || '<tr><td class="meta">–</td></tr>'}</table>` +
    `<h3>strongest classes <span class="meta">(${esc(data.classes_by)})</span></h3>` +
    `<table>${classes || '<tr><td class="meta">–</td></tr>'}</table></div></div>` +
    `<h3>${esc(examplesHeading(u.top, 'highest'))}</h3>${strip(u.top)}` +
    `<h3>${esc(examplesHeading(u.bottom, 'lowest'))}</h3>${strip(u.bottom)}`;
  panel.classList.add('open');
  document.getElementById('close').focus();
}
window.addEventListener('hashchange', () => show(decodeURIComponent(location.hash.slice(1))));
document.getElementById('close').onclick = () => { history.pushState('', '', location.pathname); panel.classList.remove('open'); };
panel.onclick = e => { if (e.target === panel) document.getElementById('close').click(); };
document.addEventListener('keydown', e => { if (e.key === 'Escape' && panel.classList.contains('open')) document.getElementById('close').click(); });
document.getElementById('filter').oninput = e => {
  const q = e.target.value.trim().toLowerCase();
  for (const t of grid.children) t.hidden = q && !t.dataset.name.includes(q);
};
if (location.hash.length > 1) show(decodeURIComponent(location.hash.slice(1)));
document.body.dataset.ready = '1';
