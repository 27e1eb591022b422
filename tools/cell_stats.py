"Size of the notebooks' export cells: count, median/mean/max non-blank lines, definitions per cell; per notebook (cells, median, max). Run from the repository root."
import json,glob,statistics,ast,sys
sizes=[];defs=[];per={}
for f in sorted(glob.glob('nbs/*.ipynb')):
    nb=json.load(open(f)); s=[]
    for c in nb['cells']:
        if c['cell_type']!='code': continue
        src=''.join(c['source'])
        if not src.lstrip().startswith('#| export') and '#| export' not in src.split('\n')[0]: continue
        n=len([l for l in src.split('\n')[1:] if l.strip()])
        try: d=sum(isinstance(x,(ast.FunctionDef,ast.ClassDef,ast.AsyncFunctionDef)) for x in ast.parse(src).body)
        except Exception: d=0
        sizes.append(n); defs.append(d); s.append(n)
    if s: per[f]=(len(s),statistics.median(s),max(s))
print('export cells',len(sizes),'median lines',statistics.median(sizes),'mean',round(statistics.mean(sizes),1),'max',max(sizes),'median defs',statistics.median(defs),'mean defs',round(statistics.mean(defs),2))
for k,v in per.items(): print(k,v)
