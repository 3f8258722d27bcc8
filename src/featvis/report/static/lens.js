// featvis concepts page (LENS-style): an index of classes from the embedded data; #key opens a class: its concepts
// ranked by importance, each with its crops, its visualization and where it appears in example images, and the
// concept-deletion curve against random orders. Inlined into index.html by featvis.report.lens; no external resources.
const data = JSON.parse(document.getElementById('lens-data').textContent);
const index = document.getElementById('index'), view = document.getElementById('class');
function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;',"'":'&#39;'})[c]); }
function fmt(v, d = 3) { return typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(d)) : '–'; }
function img(src, alt, cls = '') {
  return src ? `<img loading="lazy" decoding="async" class="${cls}" src="${esc(src)}" alt="${esc(alt)}">`
    : '<span class="missing" title="missing from the run folder, or not a PNG image">missing</span>';
}
const frag = document.createDocumentFragment();
data.classes.forEach(c => {
  const b = document.createElement('a');
  b.className = 'tile'; b.href = '#' + encodeURIComponent(c.key); b.dataset.name = c.name.toLowerCase();
  const top = c.concepts[0];
  b.innerHTML = img(top && top.crops[0], c.name) + `<span class="name">${esc(c.name)}</span>` +
    `<span class="meta">${c.concepts.length} concepts · ${c.images} images</span>`;
  frag.appendChild(b);
});
index.appendChild(frag);
// the deletion curves: the class score as concepts are removed, most important first, and the random orders' band
function curve(d, verb = 'removed') {
  if (!d || !d.curve || !d.curve.length) return '';
  const W = 320, H = 150, P = 28, all = [...d.curve, ...d.random_low, ...d.random_high];
  const lo = Math.min(...all), hi = Math.max(...all), n = d.curve.length - 1 || 1;
  const x = i => P + (W - P - 8) * i / n, y = v => H - P - (H - P - 8) * (v - lo) / ((hi - lo) || 1);
  const line = vs => vs.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join('');
  const band = line(d.random_high) + d.random_low.map((v, i) => i).reverse()
    .map(i => `L${x(i).toFixed(1)},${y(d.random_low[i]).toFixed(1)}`).join('') + 'Z';
  return `<svg class="curve" viewBox="0 0 ${W} ${H}" role="img" aria-label="concept ${verb === 'removed' ? 'deletion' : 'insertion'} curve">` +
    `<path class="band" d="${band}"/><path class="random" d="${line(d.random_mean)}"/>` +
    `<path class="ours" d="${line(d.curve)}"/><text x="${P}" y="${H - 8}">0</text>` +
    `<text x="${W - 8}" y="${H - 8}" text-anchor="end">${n} ${verb}</text><text x="2" y="14">${fmt(hi, 2)}</text>` +
    `<text x="2" y="${H - P}">${fmt(lo, 2)}</text></svg><div class="legend"><i class="o"></i>most important first` +
    `<i class="r"></i>random orders, mean<i class="b"></i>random orders, ${esc(data.band_words)}</div>`;
}
function show(key) {
  const c = data.classes.find(x => x.key === key);
  if (!c) { view.hidden = true; index.hidden = false; document.getElementById('filter').hidden = false; return; }
  const faith = (d, words, better, verb) => d ? `<div class="faith"><p>${esc(words)} AUC <b>${fmt(d.auc)}</b> ` +
    `[${fmt(d.auc_ci[0])}, ${fmt(d.auc_ci[1])}] against ${fmt(d.random_auc)} [${fmt(d.random_ci[0])}, ` +
    `${fmt(d.random_ci[1])}] for ${d.orders} random orders (95 % bootstrap intervals over ${d.images} images; ` +
    `${better} is more faithful).</p>${curve(d, verb)}</div>` : '';
  const del = '<div class="faiths">' + faith(c.deletion, data.deletion_words, 'lower', 'removed') +
    faith(c.insertion, data.insertion_words, 'higher', 'added') + '</div>';
  const maxImp = Math.max(...c.concepts.map(k => k.importance || 0), 1e-12);
  const rows = c.concepts.map((k, r) => {
    const maps = (k.maps || []).map((m, i) => `<figure>${img(m, 'where concept ' + k.id + ' appears')}` +
      `<figcaption>${esc((c.examples || [])[i] || '')}</figcaption></figure>`).join('');
    return `<section class="concept" id="c-${k.id}"><h3>#${r + 1} · concept ${k.id}` +
      `<span class="bar" style="width:${(100 * (k.importance || 0) / maxImp).toFixed(1)}px"></span>` +
      `<span class="meta">importance ${fmt(k.importance)} (${fmt(100 * (k.share || 0), 1)} % of the total)</span></h3>` +
      `<div class="row"><div class="vis">${k.visual ? img(k.visual, 'visualization') : ''}` +
      `<div class="meta">${k.visual ? esc(data.visual_words) : ''}</div></div>` +
      `<div><div class="meta">crops where it is strongest</div><div class="strip">` +
      k.crops.map(p => img(p, 'crop')).join('') + '</div>' +
      (maps ? `<div class="meta">where it appears in ${esc(c.name)} images</div><div class="strip">${maps}</div>` : '') +
      '</div></div></section>';
  }).join('');
  view.innerHTML = `<p><a href="#" id="back">← all classes</a></p><h2>${esc(c.name)}</h2>` +
    `<p class="meta">${c.concepts.length} concepts at ${esc(data.layer)} from ${c.crops} crops of ${c.images} images;` +
    ` importance: ${esc(data.importance_words)}</p>${del}${rows}`;
  view.hidden = false; index.hidden = true; document.getElementById('filter').hidden = true;
  window.scrollTo(0, 0);
}
window.addEventListener('hashchange', () => show(decodeURIComponent(location.hash.slice(1))));
document.getElementById('filter').oninput = e => {
  const q = e.target.value.trim().toLowerCase();
  for (const t of index.children) t.hidden = q && !t.dataset.name.includes(q);
};
show(decodeURIComponent(location.hash.slice(1)));
document.body.dataset.ready = '1';
