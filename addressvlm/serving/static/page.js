// The page of tools/serve.py: sends a photo to /v1/locate, shows the answers, the top streets as a bar chart and
// the city map drawn from /v1/city (the city's own street geometry: no tiles, nothing from the internet).
"use strict";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let city = null;

function svgElement(tag, attributes, parent) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  parent.appendChild(element);
  return element;
}

// lon/lat -> map pixels: an equirectangular projection with longitude scaled by cos(latitude), so a city's
// streets keep their shape.
function projection(svg) {
  const [west, south, east, north] = city.bounds;
  const scaleX = Math.cos(((south + north) / 2) * Math.PI / 180);
  const width = Math.max((east - west) * scaleX, 1e-9), height = Math.max(north - south, 1e-9);
  const size = Number(svg.getAttribute("width")) - 20, scale = size / Math.max(width, height);
  return ([lon, lat]) => [10 + (lon - west) * scaleX * scale, 10 + (north - lat) * scale];
}

function drawMap(topStreets, truth) {
  const svg = $("city-map");
  svg.replaceChildren();
  const project = projection(svg);
  const rank = new Map((topStreets || []).map((s, i) => [s.key, i]));
  const ordered = [...city.streets].sort((a, b) => rank.has(a.key) - rank.has(b.key));  // highlighted on top
  for (const street of ordered) {
    for (const line of street.lines) {
      const d = line.map((point, i) => (i ? "L" : "M") + project(point).map((v) => v.toFixed(1)).join(",")).join("");
      const path = svgElement("path", {d, "data-street": street.name}, svg);
      if (rank.has(street.key)) path.classList.add("top");
      svgElement("title", {}, path).textContent = street.name;
    }
    if (rank.has(street.key)) {
      const middle = street.lines[0][Math.floor(street.lines[0].length / 2)];
      const [x, y] = project(middle);
      svgElement("text", {x: x + 4, y: y - 4, class: "label"}, svg).textContent = `${rank.get(street.key) + 1}. ${street.name}`;
    }
  }
  if (truth) {
    const [x, y] = project([truth.lon, truth.lat]);
    svgElement("title", {}, svgElement("circle", {cx: x, cy: y, r: 7, class: "truth", id: "true-location"}, svg))
      .textContent = `true location: ${truth.street}, ${truth.district}`;
  }
}

function drawChart(topStreets) {
  const svg = $("street-chart");
  svg.replaceChildren();
  const labelWidth = 170, barWidth = Number(svg.getAttribute("width")) - labelWidth - 50;
  topStreets.forEach((street, i) => {
    const y = 8 + i * 28;
    svgElement("text", {x: 0, y: y + 14}, svg).textContent = street.name;
    svgElement("rect", {x: labelWidth, y, height: 18, width: Math.max(1, street.probability * barWidth),
                        "data-street": street.name}, svg);
    svgElement("text", {x: labelWidth + street.probability * barWidth + 4, y: y + 14}, svg)
      .textContent = `${(100 * street.probability).toFixed(1)}%`;
  });
}

function show(result) {
  $("district").textContent = result.district;
  $("street").textContent = result.street;
  for (const id of ["answer", "answer-label"]) $(id).hidden = result.answer === null;
  $("answer").textContent = result.answer || "";
  const truth = result.true_location;
  for (const id of ["truth", "truth-label"]) $(id).hidden = !truth;
  $("truth").textContent = truth ? `${truth.street}, ${truth.district}` : "";
  const list = $("top-districts");
  list.replaceChildren(...result.top_districts.map((d) => {
    const item = document.createElement("li");
    item.textContent = `${d.name} (${(100 * d.probability).toFixed(1)}%)`;
    return item;
  }));
  drawChart(result.top_streets);
  drawMap(result.top_streets, truth);
  $("answers").hidden = false;
}

// Empties the answers, the chart and the map's highlights: nothing of an earlier photo stays beside a new one.
function clearResults() {
  $("answers").hidden = true;
  for (const id of ["district", "street", "answer", "truth"]) $(id).textContent = "";
  $("top-districts").replaceChildren();
  $("street-chart").replaceChildren();
  drawMap([], null);
}

// A response's JSON, or null for anything else (a proxy's or a failing server's text page).
function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

let latestUpload = 0;  // an answer to an earlier upload that comes after a later one's is dropped

async function locate(file) {
  const upload = ++latestUpload;
  clearResults();
  URL.revokeObjectURL($("preview").src);
  $("preview").src = URL.createObjectURL(file);
  $("preview").hidden = false;
  $("drop-hint").hidden = true;
  $("status").textContent = "locating...";
  const form = new FormData();
  form.append("image", file);
  if ($("question").value.trim()) form.append("question", $("question").value.trim());
  try {
    const response = await fetch("/v1/locate", {method: "POST", body: form});
    const text = await response.text();
    if (upload !== latestUpload) return;
    const result = parseJson(text);
    if (response.ok && result) {
      $("status").textContent = "";
      show(result);
      return;
    }
    const message = result?.error?.message || text.trim().split("\n")[0] || response.statusText;
    $("status").textContent = `error: HTTP ${response.status}: ${message}`;
  } catch (error) {  // no answer (the server stopped) or one the page cannot show
    if (upload === latestUpload) {
      clearResults();
      $("status").textContent = `error: ${error.message}`;
    }
  }
}

async function start() {
  city = await (await fetch("/v1/city")).json();
  drawMap([], null);
  $("photo").addEventListener("change", () => $("photo").files[0] && locate($("photo").files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    if (event.dataTransfer.files[0]) locate(event.dataTransfer.files[0]);
  });
  document.body.dataset.ready = "true";
}

start();
