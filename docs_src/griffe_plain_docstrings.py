"""A Griffe extension for the site's API reference: tinyddim's docstrings are plain text (Unicode math,
indented blocks right under the line that introduces them), read by mkdocstrings as Markdown. A blank line
before and after each indented block makes it a code block, so its columns read as they do in the code."""

import griffe


def plain_to_markdown(text):
    out = []
    for line in text.splitlines():
        indented = line.startswith(" ") and line.strip()
        if out and out[-1].strip():
            previous_indented = out[-1].startswith(" ")
            if indented and not previous_indented or line.strip() and not indented and previous_indented:
                out.append("")
        out.append(line)
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = plain_to_markdown(obj.docstring.value)
