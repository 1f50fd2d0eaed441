"""Write README.md from nbs/index.ipynb (quarto, which nbdev_readme needs, is not available everywhere).

Markdown cells are copied; code cells become ```python blocks; cells starting with `#| hide` are left out."""
import json
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def cell_text(c)->str:
    src = ''.join(c['source']).strip()
    if c['cell_type'] == 'markdown': return src
    lines = [line for line in src.splitlines() if not line.startswith('#|')]
    return '```python\n' + '\n'.join(lines).strip() + '\n```' if lines else ''

def make_readme(nb=root/'nbs'/'index.ipynb', out=root/'README.md'):
    cells = json.loads(Path(nb).read_text())['cells']
    keep = [c for c in cells if not ''.join(c['source']).lstrip().startswith('#| hide')]
    head = '<!-- Generated from nbs/index.ipynb by scripts/make_readme.py: edit the notebook, not this file. -->\n\n'
    Path(out).write_text(head + '\n\n'.join(t for t in map(cell_text, keep) if t) + '\n')

if __name__ == '__main__': make_readme()
