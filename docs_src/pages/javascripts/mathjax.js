// MathJax 3 (SVG output: no web fonts to fetch), served from this site's own assets/mathjax/.
// $...$ and $$...$$ are the notebooks' delimiters; \(...\) and \[...\] are what pymdownx.arithmatex writes.
window.MathJax = {
  tex: {
    inlineMath: [["$", "$"], ["\\(", "\\)"]],
    displayMath: [["$$", "$$"], ["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
    tags: "ams",
  },
  options: {
    ignoreHtmlClass: "mathjax_ignore|tex2jax_ignore",
  },
  svg: { fontCache: "global" },
};
