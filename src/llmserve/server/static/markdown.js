// A small, safe markdown renderer for model replies.
//
// Safety comes from the order: the whole text is HTML-escaped first, so every tag in the
// output is one this file writes, and the only attributes it writes are a sanitised code
// language class and http(s) link targets (already escaped, so quotes cannot break out).
// Handles: fenced code blocks (an unclosed fence while streaming renders as code so far),
// inline code, bold, italic, strikethrough, links, headings, lists (nested by indent),
// block quotes, horizontal rules and paragraphs.
(function () {
  "use strict";

  const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ESCAPES[c]);
  }

  const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)/;
  const LIST_ITEM = /^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$/;
  const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
  const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
  const QUOTE = /^ {0,3}&gt;\s?(.*)$/;  // the text is already escaped: ">" is "&gt;"

  function inline(text) {
    // inline code first, swapped out so nothing below touches its content
    const spans = [];
    text = text.replace(/(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g, (_, ticks, code) => {
      spans.push("<code>" + code.trim() + "</code>");
      return "\u0000" + (spans.length - 1) + "\u0000";
    });
    text = text
      .replace(/\*\*(?=\S)([\s\S]*?\S)\*\*/g, "<strong>$1</strong>")
      .replace(/(^|[^\w])__(?=\S)([\s\S]*?\S)__(?!\w)/g, "$1<strong>$2</strong>")
      .replace(/\*([^\s*](?:[^*]*?[^\s*])?)\*/g, "<em>$1</em>")
      .replace(/(^|[^\w])_([^\s_](?:[^_]*?[^\s_])?)_(?!\w)/g, "$1<em>$2</em>")
      .replace(/~~(?=\S)([\s\S]*?\S)~~/g, "<del>$1</del>")
      .replace(/\[([^\]\n]+)\]\((https?:\/\/[^\s)]+)\)/g,
        '<a href="$2" target="_blank" rel="noopener noreferrer">$1</a>');
    return text.replace(/\u0000(\d+)\u0000/g, (_, i) => spans[Number(i)]);
  }

  function codeBlock(lang, lines) {
    const safeLang = lang.replace(/[^\w+#.-]/g, "").slice(0, 32);
    const cls = safeLang ? ' class="language-' + safeLang + '"' : "";
    const head = '<div class="code-head"><span class="code-lang">' + (safeLang || "code") + "</span>"
      + '<button type="button" class="copy">Copy</button></div>';
    return '<div class="code-block">' + head + "<pre><code" + cls + ">" + lines.join("\n") + "</code></pre></div>";
  }

  // Lists: consecutive item lines (and their indented continuation lines); deeper indents nest.
  function list(lines, start) {
    const items = [];
    let i = start;
    while (i < lines.length) {
      const m = lines[i].match(LIST_ITEM);
      if (m) {
        items.push({ indent: m[1].replace(/\t/g, "    ").length, ordered: /\d/.test(m[2]), num: parseInt(m[2], 10), text: m[3] });
        i++;
      } else if (items.length && /^\s+\S/.test(lines[i]) && !FENCE.test(lines[i])) {
        items[items.length - 1].text += "\n" + lines[i].trim();  // continuation of the item above
        i++;
      } else {
        break;
      }
    }
    return { html: nest(items, 0, items.length ? items[0].indent : 0).html, next: i };
  }

  function nest(items, pos, indent) {
    const ordered = items[pos].ordered;
    const startAttr = ordered && items[pos].num !== 1 ? ' start="' + items[pos].num + '"' : "";
    let html = (ordered ? "<ol" + startAttr + ">" : "<ul>");
    while (pos < items.length && items[pos].indent >= indent) {
      const item = items[pos];
      html += "<li>" + inline(item.text).replace(/\n/g, "<br>");
      pos++;
      if (pos < items.length && items[pos].indent > item.indent) {
        const sub = nest(items, pos, items[pos].indent);
        html += sub.html;
        pos = sub.pos;
      }
      html += "</li>";
    }
    return { html: html + (ordered ? "</ol>" : "</ul>"), pos: pos };
  }

  function render(markdown) {
    const lines = escapeHtml(String(markdown).replace(/\u0000/g, "")).replace(/\r\n?/g, "\n").split("\n");
    const out = [];
    let i = 0;
    while (i < lines.length) {
      const line = lines[i];
      const fence = line.match(FENCE);
      if (fence) {
        const body = [];
        const close = new RegExp("^ {0,3}" + fence[1][0] + "{" + fence[1].length + ",}\\s*$");
        i++;
        while (i < lines.length && !close.test(lines[i])) body.push(lines[i++]);
        i++;  // the closing fence (or past the end, while it is still streaming)
        out.push(codeBlock(fence[2], body));
        continue;
      }
      if (!line.trim()) { i++; continue; }
      const heading = line.match(HEADING);
      if (heading) {
        const level = Math.min(heading[1].length + 2, 6);  // replies sit inside a page: h3..h6
        out.push("<h" + level + ">" + inline(heading[2]) + "</h" + level + ">");
        i++;
        continue;
      }
      if (RULE.test(line)) { out.push("<hr>"); i++; continue; }
      if (LIST_ITEM.test(line)) {
        const l = list(lines, i);
        out.push(l.html);
        i = l.next;
        continue;
      }
      if (QUOTE.test(line)) {
        const quoted = [];
        while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
        out.push("<blockquote>" + inline(quoted.join("\n")).replace(/\n/g, "<br>") + "</blockquote>");
        continue;
      }
      const para = [];
      while (i < lines.length && lines[i].trim() && !FENCE.test(lines[i]) && !HEADING.test(lines[i])
             && !LIST_ITEM.test(lines[i]) && !QUOTE.test(lines[i]) && !RULE.test(lines[i])) {
        para.push(lines[i++]);
      }
      out.push("<p>" + inline(para.join("\n")).replace(/\n/g, "<br>") + "</p>");
    }
    return out.join("");
  }

  window.llmMarkdown = { render: render, escapeHtml: escapeHtml };
})();
