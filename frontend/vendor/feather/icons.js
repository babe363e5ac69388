// A few Feather icons (https://feathericons.com, v4.29.2, MIT License, see LICENSE here),
// as element data so they can be built with DOM calls under the page's CSP.

const NS = 'http://www.w3.org/2000/svg';
const ICONS = {
 "thumbs-up": [
  [
   "path",
   {
    "d": "M14 9V5a3 3 0 0 0-3-3l-4 9v11h11.28a2 2 0 0 0 2-1.7l1.38-9a2 2 0 0 0-2-2.3zM7 22H4a2 2 0 0 1-2-2v-7a2 2 0 0 1 2-2h3"
   }
  ]
 ],
 "thumbs-down": [
  [
   "path",
   {
    "d": "M10 15v4a3 3 0 0 0 3 3l4-9V2H5.72a2 2 0 0 0-2 1.7l-1.38 9a2 2 0 0 0 2 2.3zm7-13h2.67A2.31 2.31 0 0 1 22 4v7a2.31 2.31 0 0 1-2.33 2H17"
   }
  ]
 ],
 "edit-2": [
  [
   "path",
   {
    "d": "M17 3a2.828 2.828 0 1 1 4 4L7.5 20.5 2 22l1.5-5.5L17 3z"
   }
  ]
 ],
 "trash-2": [
  [
   "polyline",
   {
    "points": "3 6 5 6 21 6"
   }
  ],
  [
   "path",
   {
    "d": "M19 6v14a2 2 0 0 1-2 2H7a2 2 0 0 1-2-2V6m3 0V4a2 2 0 0 1 2-2h4a2 2 0 0 1 2 2v2"
   }
  ],
  [
   "line",
   {
    "x1": "10",
    "y1": "11",
    "x2": "10",
    "y2": "17"
   }
  ],
  [
   "line",
   {
    "x1": "14",
    "y1": "11",
    "x2": "14",
    "y2": "17"
   }
  ]
 ],
 "rotate-cw": [
  [
   "polyline",
   {
    "points": "23 4 23 10 17 10"
   }
  ],
  [
   "path",
   {
    "d": "M20.49 15a9 9 0 1 1-2.12-9.36L23 10"
   }
  ]
 ],
 "menu": [
  [
   "line",
   {
    "x1": "3",
    "y1": "12",
    "x2": "21",
    "y2": "12"
   }
  ],
  [
   "line",
   {
    "x1": "3",
    "y1": "6",
    "x2": "21",
    "y2": "6"
   }
  ],
  [
   "line",
   {
    "x1": "3",
    "y1": "18",
    "x2": "21",
    "y2": "18"
   }
  ]
 ],
 "chevron-left": [
  [
   "polyline",
   {
    "points": "15 18 9 12 15 6"
   }
  ]
 ],
 "chevron-right": [
  [
   "polyline",
   {
    "points": "9 18 15 12 9 6"
   }
  ]
 ],
 "x": [
  [
   "line",
   {
    "x1": "18",
    "y1": "6",
    "x2": "6",
    "y2": "18"
   }
  ],
  [
   "line",
   {
    "x1": "6",
    "y1": "6",
    "x2": "18",
    "y2": "18"
   }
  ]
 ]
};

/** An inline SVG icon (decorative: label the button that holds it). */
export function icon(name) {
  const svg = document.createElementNS(NS, 'svg');
  for (const [k, v] of Object.entries({ viewBox: '0 0 24 24', width: 16, height: 16, fill: 'none', stroke: 'currentColor',
    'stroke-width': 2, 'stroke-linecap': 'round', 'stroke-linejoin': 'round', 'aria-hidden': 'true', focusable: 'false', class: 'icon' })) {
    svg.setAttribute(k, String(v));
  }
  for (const [tag, attrs] of ICONS[name] || []) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    svg.append(node);
  }
  return svg;
}
