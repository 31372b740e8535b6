(function () {
  "use strict";
  var root = document.documentElement;
  root.classList.remove("no-js");
  root.classList.add("js");
  var data = JSON.parse(document.getElementById("fv-data").textContent);
  var sections = Array.prototype.slice.call(document.querySelectorAll("section.layer"));
  var links = Array.prototype.slice.call(document.querySelectorAll(".tree a"));
  var total = data.samples.length;
  var shown = 0;

  function each(selector, fn) { Array.prototype.forEach.call(document.querySelectorAll(selector), fn); }

  // An address saved from an older report (#layer-layer1-0-conv1, ...-channel-5): the same place, readably.
  var oldIds = Object.create(null);  // no inherited keys: #constructor is no old id
  each("section[data-old]", function (s) { oldIds[s.dataset.old] = s.id; });
  function upgradeOldHash() {
    var id = location.hash.slice(1), channel = /^(.+)(-channel-\d+)$/.exec(id);
    var here = document.getElementById(id);
    var now = oldIds[id] || (!here && channel && oldIds[channel[1]] ? oldIds[channel[1]] + channel[2] : "");
    if (!now) { return; }
    history.replaceState(history.state, "", "#" + now);
    var target = document.getElementById(now);
    if (target) { target.scrollIntoView(); }
  }
  window.addEventListener("hashchange", upgradeOldHash);
  upgradeOldHash();

  function showSample(index) {
    if (!total) { return; }
    shown = (index % total + total) % total;
    each(".map", function (f) { f.classList.toggle("on", Number(f.dataset.sample) === shown); });
    each(".sample", function (b) {
      var on = Number(b.dataset.sample) === shown;
      b.classList.toggle("on", on);
      b.setAttribute("aria-pressed", on ? "true" : "false");
    });
    each(".picker .which", function (w) {
      w.textContent = "Sample " + shown + " of " + total + " · " + data.samples[shown];
    });
  }

  function currentIndex() {
    var line = window.scrollY + 96, index = -1;
    sections.forEach(function (s, i) { if (s.offsetTop <= line) { index = i; } });
    return index;
  }

  function hrefId(a) { return a.getAttribute("href").replace(/^[^#]*#/, ""); }  // a layer link's section id

  function goLayer(step) {
    if (!sections.length) { return; }
    if (sections.length === 1 && links.length > 1) {  // a scan's layer page: the next layer's page
      var here = links.map(hrefId).indexOf(sections[0].id);
      var link = links[Math.max(0, Math.min(links.length - 1, here + step))];
      if (here >= 0) { location.href = link.href; }
      return;
    }
    var next = Math.max(0, Math.min(sections.length - 1, currentIndex() + step));
    location.hash = "#" + sections[next].id;
  }

  var ticking = false;
  function markCurrent() {
    ticking = false;
    var index = currentIndex();
    var id = index >= 0 ? sections[index].id : "";
    links.forEach(function (a) {
      var on = hrefId(a) === id;
      if (on && !a.classList.contains("current")) { keepInView(a); }
      a.classList.toggle("current", on);
      if (on) { a.setAttribute("aria-current", "location"); } else { a.removeAttribute("aria-current"); }
    });
    graphNodes.forEach(function (a) { a.classList.toggle("current", "layer-" + a.getAttribute("data-node") === id); });
  }
  function keepInView(link) {  // the sidebar follows the current layer (a deep link, keys, scrolling)
    var side = link.closest(".sidebar");
    if (!side) { return; }
    var box = link.getBoundingClientRect(), frame = side.getBoundingClientRect();
    if (box.top < frame.top || box.bottom > frame.bottom) { side.scrollTop += box.top - frame.top - side.clientHeight / 3; }
  }
  var graphNodes = Array.prototype.slice.call(document.querySelectorAll("svg.graph a[data-node]"));
  function openDetail() {  // a folded module's box links to its drawing: open it
    var target = window.location.hash ? document.getElementById(window.location.hash.slice(1)) : null;
    if (target && target.tagName === "DETAILS") { target.open = true; }
  }
  window.addEventListener("hashchange", openDetail);
  openDetail();
  window.addEventListener("scroll", function () {
    if (!ticking) { ticking = true; window.requestAnimationFrame(markCurrent); }
  }, { passive: true });

  var search = document.getElementById("find-layer");
  var items = Array.prototype.slice.call(document.querySelectorAll(".tree li")).reverse();
  function ownLabel(li) {
    return li.querySelector(":scope > a, :scope > span.plain");
  }
  search.addEventListener("input", function () {
    var query = search.value.trim().toLowerCase();
    items.forEach(function (li) {
      var own = ownLabel(li);
      var text = own ? own.title.toLowerCase() : "";
      var child = Array.prototype.some.call(li.querySelectorAll(":scope > ul > li"), function (c) { return !c.hidden; });
      li.hidden = query !== "" && text.indexOf(query) < 0 && !child;
    });
  });
  search.addEventListener("keydown", function (event) {
    if (event.key === "Enter") {
      var query = search.value.trim().toLowerCase();
      var first = links.filter(function (a) { return a.title.toLowerCase().indexOf(query) >= 0; })[0];
      if (first) { location.href = first.href; search.blur(); }
    } else if (event.key === "Escape") {
      search.value = "";
      search.dispatchEvent(new Event("input"));
      search.blur();
    }
  });

  function setExpanded(li, open) {
    var twist = li.querySelector(":scope > .twist");
    li.classList.toggle("collapsed", !open);
    twist.setAttribute("aria-expanded", open ? "true" : "false");
    twist.setAttribute("aria-label", (open ? "Collapse " : "Expand ") + ownLabel(li).title.split(" · ")[0]);
  }

  function revealInTree() {
    var link = links.filter(function (a) { return "#" + hrefId(a) === location.hash; })[0];
    for (var node = link && link.parentNode; node; node = node.parentNode) {
      if (node.classList && node.classList.contains("collapsed")) { setExpanded(node, true); }
    }
  }
  window.addEventListener("hashchange", revealInTree);

  function openChannelLink() {  // #layer-<id>-channel-<c>: in a report, that channel's enlarged view
    var match = /^#layer-(.+)-channel-(\d+)$/.exec(location.hash);
    if (!match || !data.layers[match[1]]) { return; }
    if (dialog.open) {  // another channel's, from a card's 'built from' link or Back: this one instead
      if (dialog.dataset.at === location.hash) { return; }
      dialog.close();
    }
    var grid = document.querySelector('.maps[data-slug="' + match[1] + '"] .map.on .grid:not([data-before])');
    var cell = grid ? data.layers[match[1]].ids.indexOf(Number(match[2])) : -1;  // a scan's card has no grid
    if (cell >= 0) { showCell(grid, cell); }
  }
  window.addEventListener("hashchange", openChannelLink);

  function toCardPage() {  // a scan folder's index: a channel's address opens its layer's page at its card
    var target = location.hash ? document.getElementById(location.hash.slice(1)) : null;
    var page = target && target.parentNode.classList.contains("card-anchors") &&
      target.closest(".cards-elsewhere").querySelector(".card-page a");
    if (page) { location.replace(page.href + location.hash); }
  }
  window.addEventListener("hashchange", toCardPage);
  toCardPage();

  each(".cards", function (cards) {  // a scan's channel cards: order and find
    var list = cards.querySelector(".card-list");
    var all = Array.prototype.slice.call(list.children);
    cards.querySelector(".card-order").addEventListener("change", function (event) {
      var key = event.target.value;
      all.slice().sort(function (a, b) {
        return key === "index" ? a.dataset.channel - b.dataset.channel : Number(b.dataset[key]) - Number(a.dataset[key]);
      }).forEach(function (card) { list.appendChild(card); });
    });
    cards.querySelector(".card-find").addEventListener("input", function (event) {
      var wanted = event.target.value.trim();
      all.forEach(function (card) { card.hidden = wanted !== "" && card.dataset.channel !== String(Number(wanted)); });
      cards.querySelector(".card-none").hidden = all.some(function (card) { return !card.hidden; });
    });
  });

  var dialog = document.getElementById("zoom");
  var canvas = dialog.querySelector("canvas");
  dialog.querySelector(".close").addEventListener("click", function () { dialog.close(); });

  function fmt(value) {
    if (value === null || value === undefined) { return "–"; }
    var size = Math.abs(value);
    return size !== 0 && (size >= 1e5 || size < 1e-3) ? value.toExponential(2) : String(Number(value.toPrecision(4)));
  }

  function outline(context, box, left, top, scale) {  // a receptive field, in input pixels, on a drawn crop
    context.strokeStyle = "#ff3b30";
    context.lineWidth = 2;
    context.strokeRect((box[0] - left) * scale + 1, (box[1] - top) * scale + 1,
      Math.max(2, (box[2] - box[0]) * scale - 2), Math.max(2, (box[3] - box[1]) * scale - 2));
  }

  function typed(text, Type) {  // a base64 little-endian typed array of the page data
    var bytes = Uint8Array.from(atob(text), function (c) { return c.charCodeAt(0); });
    return new Type(bytes.buffer);
  }

  function peaksOf(layer, channel) {  // [sample, value, row, col, (x0, y0, x1, y1, top, left, side)] per rank
    var top = layer.top;
    if (!top.decoded) {
      top.decoded = { ints: typed(top.ints, top.bytes === 2 ? Int16Array : Int32Array), values: typed(top.values, Float32Array) };
    }
    var ints = top.decoded.ints, values = top.decoded.values, peaks = [];
    for (var rank = 0; rank < top.k; rank++) {
      var at = (channel * top.k + rank) * top.n;
      if (at >= ints.length || ints[at] < 0) { continue; }
      var peak = [ints[at], values[channel * top.k + rank]];
      for (var j = 1; j < top.n; j++) { peak.push(ints[at + j]); }
      peaks.push(peak);
    }
    return peaks;
  }

  function peakCanvas(peak, size) {  // a top sample cut around its peak's receptive field (when known)
    var thumb = document.querySelector('.sample[data-sample="' + peak[0] + '"] img');
    if (!thumb) { return null; }
    var small = document.createElement("canvas");
    small.width = size; small.height = size;
    var context = small.getContext("2d"), ratio = thumb.naturalWidth / data.input[1];
    context.imageSmoothingEnabled = false;
    if (peak.length > 4) {  // sample, value, row, col, box (x0 y0 x1 y1), crop (top left side)
      var top = peak[8], left = peak[9], side = peak[10];
      context.drawImage(thumb, left * ratio, top * ratio, side * ratio, side * ratio, 0, 0, size, size);
      outline(context, peak.slice(4, 8), left, top, size / side);
    } else {
      context.drawImage(thumb, 0, 0, size, size);
    }
    return small;
  }

  function showTop(layer, channel) {  // each top sample cut around its peak's receptive field (when known)
    var box = dialog.querySelector(".tops");
    box.textContent = "";
    var peaks = peaksOf(layer, channel);
    if (!peaks.length) { return; }
    var title = document.createElement("p");
    title.textContent = "Top samples for this channel, best first, each with its peak (the channel's highest value over "
      + "positions on that sample)" + (peaks[0].length > 4
      ? ": cut around the peak, its receptive field outlined; click for the whole image" : "");
    box.appendChild(title);
    peaks.forEach(function (peak, rank) {
      var small = peakCanvas(peak, 72);
      if (!small) { return; }
      var thumb = document.querySelector('.sample[data-sample="' + peak[0] + '"] img');
      var figure = document.createElement("figure"), button = document.createElement("button");
      var name = data.samples[peak[0]];
      button.type = "button";
      button.className = "whole";
      button.setAttribute("aria-label", "top sample " + (rank + 1) + ", " + name + " (sample " + peak[0] + "), peak " + fmt(peak[1]) + ": show the whole image");
      button.addEventListener("click", function () {
        showWhole(layer.name + " · channel " + channel + " · sample " + peak[0] + " (" + name + "), whole · peak " + fmt(peak[1]),
          thumb, peak.length > 4 ? peak.slice(4, 8) : null);
      });
      var caption = document.createElement("figcaption"), file = document.createElement("span");
      file.className = "file";
      file.title = name;
      file.textContent = name;
      caption.textContent = (rank + 1) + ". ";
      caption.appendChild(file);
      caption.appendChild(document.createTextNode(" · peak " + fmt(peak[1])));
      button.appendChild(small); figure.appendChild(button); figure.appendChild(caption); box.appendChild(figure);
    });
  }

  function inputPicture(slug, channel) {  // what excites an input channel: its optimised image, else its best sample
    var tile = document.querySelector('.featviz[data-slug="' + slug + '"] li[data-channel="' + channel + '"] img');
    if (tile) {
      var img = tile.cloneNode();
      img.removeAttribute("loading");
      img.alt = "";
      return img;
    }
    var layer = data.layers[slug];
    var peaks = layer && !layer.vector ? peaksOf(layer, channel) : [];
    return peaks.length ? peakCanvas(peaks[0], 64) : null;
  }

  function showBuilt(slug, channel) {  // the channel's 'built from' row, from its row in the layer's panel
    var view = dialog.querySelector(".built-view");
    view.textContent = "";
    var row = document.getElementById("layer-" + slug + "-channel-" + channel);
    var unknown = document.querySelector('.circuits-unknown[data-slug="' + slug + '"]');
    view.hidden = !(row && row.closest(".built")) && !unknown;
    if (view.hidden || !(row && row.closest(".built"))) {  // none, or why there are none (it reads the image)
      if (unknown) { var why = document.createElement("p"); why.textContent = unknown.textContent; view.appendChild(why); }
      return;
    }
    var panel = row.closest(".circuits");
    var title = document.createElement("p");
    title.textContent = "Built from: its strongest inputs, strongest first, by " + panel.dataset.method
      + (panel.dataset.samples ? " over " + panel.dataset.samples + " samples" : "")
      + " (see the layer's panel); each opens that channel, and Back returns here";
    view.appendChild(title);
    var strip = row.querySelector("svg.strip"), box = strip ? strip.getAttribute("viewBox").split(" ").map(Number) : null;
    var none = row.querySelector(":scope > .none");
    if (none) { var nothing = document.createElement("p"); nothing.textContent = none.textContent; view.appendChild(nothing); }
    Array.prototype.forEach.call(row.querySelectorAll(":scope > a, :scope > span[data-at]"), function (entry, slot) {
      var href = entry.getAttribute("href");  // none for an input whose channel this page does not show
      var at = href ? /^#layer-(.+)-channel-(\d+)$/.exec(href).slice(1) : entry.dataset.at.split(" ");
      var source = data.layers[at[0]], input = Number(at[1]);
      var link = document.createElement(href ? "a" : "span"), caption = document.createElement("span");
      var was = entry.querySelector(".was"), weight = entry.textContent.split(" ")[1];  // "12 +0.41", "12b +0.41 A +0.3"
      if (href) { link.href = href; }
      var picture = inputPicture(at[0], input);
      if (picture) { link.appendChild(picture); }
      if (box) {  // this input's tile of the row's strip of patterns
        var pattern = strip.cloneNode(true), width = box[2] / Number(panel.dataset.cols);
        pattern.setAttribute("viewBox", [slot * width, box[1], width, box[3]].join(" "));
        pattern.setAttribute("class", "pattern");
        link.appendChild(pattern);
      }
      var from = document.createElement("span");  // the layer's name on a line of its own, its end where long
      from.textContent = source.name.length > 11 ? "…" + source.name.slice(-10) : source.name;
      from.title = source.name;
      caption.textContent = input + " · " + weight + (was ? " · " + was.textContent : "");
      link.appendChild(from);
      link.appendChild(caption);
      link.setAttribute("aria-label", source.name + ", channel " + input + ", strength " + weight
        + (was ? ", " + was.textContent : "") + (href ? ": open its inputs" : ": not shown on this page"));
      view.appendChild(link);
    });
  }

  function showCanvas() {  // the large canvas, not a scan's image view
    var view = dialog.querySelector(".whole-view");
    if (view) { view.setAttribute("hidden", ""); }
    canvas.hidden = false;
  }

  function showWhole(title, image, box) {  // an image whole, in the large canvas, a receptive field outlined
    showCanvas();
    var fit = 256 / Math.max(image.naturalWidth, image.naturalHeight);
    canvas.width = Math.round(image.naturalWidth * fit);
    canvas.height = Math.round(image.naturalHeight * fit);
    var context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(image, 0, 0, canvas.width, canvas.height);
    if (box) { outline(context, box, 0, 0, canvas.width / data.input[1]); }
    dialog.querySelector("h3").textContent = title;
    canvas.setAttribute("aria-label", title + (box ? ", the peak's receptive field outlined" : ""));
  }

  function showCardImage(button) {  // a scan card's top image as the page stores it, with its peak's receptive field
    var card = button.closest(".card"), layer = data.layers[button.closest(".cards").dataset.slug];
    var use = button.querySelector("use"), field = button.querySelector("rect");
    var source = document.getElementById(use.getAttribute("href").slice(1));
    var view = dialog.querySelector(".whole-view"), figure = button.closest("figure");
    var at = ["x", "y", "width", "height"].map(function (key) { return Number(source.getAttribute(key)); });
    var whole = at[0] === 0 && at[1] === 0 && at[2] === data.input[1] && at[3] === data.input[0];
    var title = layer.name + " · " + (layer.vector ? "feature " : "channel ") + card.dataset.channel + " · " +
      figure.querySelector(".file").textContent + (whole ? ", whole" : ", the part of it this page stores") +
      " · peak " + figure.querySelector(".mono").textContent;
    view.setAttribute("viewBox", at.join(" "));
    view.textContent = "";
    view.appendChild(use.cloneNode());
    if (field) { view.appendChild(field.cloneNode()); }
    view.setAttribute("aria-label", title + (field ? ", the peak's receptive field outlined" : ""));
    view.removeAttribute("hidden");  // an SVG element has no .hidden
    canvas.hidden = true;
    dialog.querySelector("h3").textContent = title;
    dialog.querySelector(".stats").textContent = "";
    dialog.querySelector(".stat-help").hidden = true;
    dialog.querySelector(".tops").textContent = "";
    dialog.querySelector(".built-view").hidden = true;
    dialog.dataset.at = "";
    var link = dialog.querySelector(".channel-link");
    link.hidden = false;
    link.setAttribute("href", "#" + card.id);
    dialog.showModal();
  }

  function showFeature(slug, channel) {  // the channel's optimised image (--featviz) first, beside its top samples
    var tile = document.querySelector('.featviz[data-slug="' + slug + '"] li[data-channel="' + channel + '"]');
    if (!tile) { return; }
    var figure = document.createElement("figure"), img = tile.querySelector("img").cloneNode();
    figure.className = "fv";
    img.removeAttribute("loading");
    var caption = document.createElement("figcaption");
    caption.textContent = "optimised image · mean " + fmt(Number(tile.dataset.activation));
    caption.title = "Its score is the channel's mean over positions, what the image was optimised to raise; "
      + "the samples are scored by their peak, the highest position, so the two numbers differ by design";
    figure.appendChild(img); figure.appendChild(caption);
    var box = dialog.querySelector(".tops"), title = box.querySelector("p");
    box.insertBefore(figure, title ? title.nextSibling : null);
    if (title) {
      title.textContent += ". The optimised image first, scored by the channel's mean over positions (what it was "
        + "optimised to raise), not by its peak";
    }
  }

  function zoom(grid, event) {
    var img = grid.querySelector("img");
    var cols = Number(grid.dataset.cols), rows = Number(grid.dataset.rows);
    var rect = img.getBoundingClientRect();
    var col = Math.min(cols - 1, Math.floor((event.clientX - rect.left) / rect.width * cols));
    var row = Math.min(rows - 1, Math.floor((event.clientY - rect.top) / rect.height * rows));
    showCell(grid, row * cols + col);
  }

  function showCell(grid, cell) {  // the enlarged view of one tile of an atlas
    var img = grid.querySelector("img");
    var slug = grid.closest(".maps").dataset.slug;
    var layer = data.layers[slug];
    var cols = Number(grid.dataset.cols), rows = Number(grid.dataset.rows);
    var col = cell % cols, row = Math.floor(cell / cols);
    if (cell >= Number(grid.dataset.count)) { return; }
    if (!img.complete || !img.naturalWidth) {  // a lazy atlas not loaded yet (a deep link): draw once it is
      img.loading = "eager";
      img.addEventListener("load", function () { if (dialog.open) { showCell(grid, cell); } }, { once: true });
    }
    var channel = layer.ids.length ? layer.ids[cell] : cell;
    var tileW = img.naturalWidth / cols, tileH = img.naturalHeight / rows;
    var fit = 256 / Math.max(tileW, tileH);
    showCanvas();
    canvas.width = Math.round(tileW * fit);
    canvas.height = Math.round(tileH * fit);
    var context = canvas.getContext("2d");
    context.imageSmoothingEnabled = false;
    context.drawImage(img, col * tileW, row * tileH, tileW, tileH, 0, 0, canvas.width, canvas.height);
    var sample = Number(grid.closest(".map").dataset.sample);
    var what = layer.vector ? "features" : "channel " + channel;
    var before = grid.hasAttribute("data-before") && layer.before;  // checkpoint A's tiles in a comparison
    var source = before ? layer.before : layer;
    dialog.querySelector("h3").textContent = layer.name + " · " + what + " · sample " + sample + " (" + data.samples[sample] + ")" + (layer.before ? (before ? " · A" : " · B") : "");
    var stats = dialog.querySelector(".stats");
    stats.textContent = "";
    var keys = before ? ["min", "mean", "std", "max"] : ["min", "mean", "std", "max", "zeros", "selectivity"];
    keys.forEach(function (key) {
      var box = document.createElement("div"), dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = (layer.vector ? "layer " : "channel ") + key;
      var value = layer.vector ? null : source[key][channel];
      dd.textContent = key === "zeros" && value !== null ? Math.round(value * 100) + "%" : fmt(value);
      box.appendChild(dt); box.appendChild(dd); stats.appendChild(box);
    });
    var flags = !before && !layer.vector && layer.flags[channel];
    if (flags) {
      var flag = document.createElement("div"), dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = "flags";
      dd.textContent = flags.join(", ");
      flag.appendChild(dt); flag.appendChild(dd); stats.appendChild(flag);
    }
    dialog.querySelector(".stat-help").hidden = keys.indexOf("selectivity") < 0 || layer.vector;
    canvas.setAttribute("aria-label", dialog.querySelector("h3").textContent + ", enlarged");
    if (before) { dialog.querySelector(".tops").textContent = ""; } else { showTop(layer, layer.vector ? 0 : channel); }
    if (!before && !layer.vector) { showFeature(slug, channel); }
    if (before || layer.vector) { dialog.querySelector(".built-view").hidden = true; } else { showBuilt(slug, channel); }
    var link = dialog.querySelector(".channel-link");
    link.hidden = layer.vector;
    link.setAttribute("href", "#layer-" + slug + "-channel-" + channel);
    dialog.dataset.at = before || layer.vector ? "" : "#layer-" + slug + "-channel-" + channel;
    dialog.showModal();
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var twist = target.closest(".tree .twist");
    if (twist) { setExpanded(twist.parentNode, twist.parentNode.classList.contains("collapsed")); return; }
    var sample = target.closest(".sample");
    if (sample) { showSample(Number(sample.dataset.sample)); return; }
    if (target.closest(".picker .prev")) { showSample(shown - 1); return; }
    if (target.closest(".picker .next")) { showSample(shown + 1); return; }
    var whole = target.closest(".card .whole");
    if (whole) { showCardImage(whole); return; }
    var grid = target.closest(".maps .grid");
    if (grid) { zoom(grid, event); }
  });

  document.addEventListener("keydown", function (event) {
    if (event.altKey || event.ctrlKey || event.metaKey || dialog.open) { return; }
    var tag = (event.target.tagName || "").toLowerCase();
    if (tag === "input" || tag === "textarea" || tag === "select") { return; }
    var actions = {
      "j": function () { goLayer(1); }, "ArrowRight": function () { goLayer(1); },
      "k": function () { goLayer(-1); }, "ArrowLeft": function () { goLayer(-1); },
      "]": function () { showSample(shown + 1); }, "[": function () { showSample(shown - 1); },
      "/": function () { search.focus(); }
    };
    if (actions[event.key]) { event.preventDefault(); actions[event.key](); }
  });

  // The graph: zoom with the buttons or Ctrl+wheel (the point under the pointer stays put), drag to pan.
  Array.prototype.forEach.call(document.querySelectorAll(".graph-wrap"), function (wrap) {
    var svg = wrap.querySelector("svg.graph");
    var tools = wrap.previousElementSibling;
    if (!svg) { return; }
    var width = parseFloat(svg.getAttribute("width")), height = parseFloat(svg.getAttribute("height")), scale = 1;
    function setScale(next, x, y) {
      next = Math.max(0.1, Math.min(4, next));
      var fx = (wrap.scrollLeft + x) / scale, fy = (wrap.scrollTop + y) / scale;
      scale = next;
      svg.setAttribute("width", (width * scale).toFixed(1));
      svg.setAttribute("height", (height * scale).toFixed(1));
      wrap.scrollLeft = fx * scale - x;
      wrap.scrollTop = fy * scale - y;
    }
    wrap.addEventListener("wheel", function (event) {
      if (!event.ctrlKey) { return; }
      event.preventDefault();
      var box = wrap.getBoundingClientRect();
      setScale(scale * (event.deltaY < 0 ? 1.15 : 1 / 1.15), event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });
    var drag = null;
    wrap.addEventListener("pointerdown", function (event) {
      if (event.button !== 0 || event.target.closest("a")) { return; }
      drag = { x: event.clientX, y: event.clientY, left: wrap.scrollLeft, top: wrap.scrollTop };
    });
    window.addEventListener("pointermove", function (event) {
      if (!drag) { return; }
      wrap.scrollLeft = drag.left - (event.clientX - drag.x);
      wrap.scrollTop = drag.top - (event.clientY - drag.y);
    });
    window.addEventListener("pointerup", function () { drag = null; });
    if (tools && tools.classList.contains("graph-tools")) {
      tools.addEventListener("click", function (event) {
        var button = event.target.closest("button");
        if (!button) { return; }
        var middle = [wrap.clientWidth / 2, wrap.clientHeight / 2];
        var fit = Math.min(wrap.clientWidth / width, wrap.clientHeight / height);
        var next = { "in": scale * 1.25, "out": scale / 1.25, "fit": fit, "reset": 1 }[button.dataset.zoom];
        setScale(next, middle[0], middle[1]);
      });
    }
  });

  showSample(0);
  markCurrent();
  revealInTree();
  openChannelLink();
}());
