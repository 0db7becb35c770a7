#!/usr/bin/env python3
"""Writes kms/wire/model.json from the botocore KMS service model.

Run through `go generate ./kms/wire` on a machine with botocore. The output
keeps only what request validation needs: each operation's input shape and,
for every shape reachable from one, its type, members in model order,
required members, min/max, enum, pattern and sensitivity. The generated file
is committed, so building hsmkms never needs botocore.
"""
import gzip, json, os, sys

import botocore

src = os.path.join(os.path.dirname(botocore.__file__), "data", "kms", "2014-11-01", "service-2.json.gz")
with gzip.open(src) as f:
    model = json.load(f)
shapes = model["shapes"]
out_shapes = {}

def visit(name):
    if name in out_shapes:
        return
    s = shapes[name]
    o = {"type": s["type"]}
    out_shapes[name] = o
    for k in ("min", "max", "enum", "pattern", "sensitive"):
        if k in s:
            o[k] = s[k]
    if s["type"] == "structure":
        o["members"] = []
        for m, ms in s.get("members", {}).items():
            entry = {"name": m, "shape": ms["shape"]}
            if ms.get("sensitive"):
                entry["sensitive"] = True
            o["members"].append(entry)
            visit(ms["shape"])
        if s.get("required"):
            o["required"] = s["required"]
    elif s["type"] == "list":
        o["member"] = s["member"]["shape"]
        visit(o["member"])
    elif s["type"] == "map":
        o["key"], o["value"] = s["key"]["shape"], s["value"]["shape"]
        visit(o["key"]); visit(o["value"])

ops = {}
for name, op in sorted(model["operations"].items()):
    ops[name] = op["input"]["shape"]
    visit(op["input"]["shape"])

dst = sys.argv[1] if len(sys.argv) > 1 else "model.json"
with open(dst, "w") as f:
    json.dump({"source": "botocore " + botocore.__version__ + " kms 2014-11-01",
               "operations": ops, "shapes": dict(sorted(out_shapes.items()))}, f, indent=1, sort_keys=False)
    f.write("\n")
