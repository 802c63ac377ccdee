"""Writes tests/fixtures/parquet: the same preference rows as JSONL and as parquet, the way
Hugging Face datasets store them (pyarrow, snappy, string columns; message lists as
list<struct<role, content>>), for tests/parquet.rs.

    python3 -m pip install pyarrow && python3 tests/reference/make_parquet_fixture.py

- prefs.jsonl / prefs.parquet: {"prompt", "chosen", "rejected"} strings, 24 rows.
- shards/train-0000{0,1}-of-00002.parquet: the same 24 rows split 13 + 11 (a folder, or a glob).
- messages.jsonl / messages.parquet: UltraFeedback-binarized's shape: "prompt" (string), "chosen"
  and "rejected" (lists of {role, content}), "messages", "score_chosen" (float64), 6 rows.
- zstd.parquet: prefs' rows compressed with zstd instead of snappy.
- ifeval.parquet: tests/fixtures/ifeval/rows.jsonl in google/IFEval's schema (kwargs a list of
  structs with every argument, null where unused).
"""
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

out = Path(__file__).resolve().parents[1] / "fixtures" / "parquet"
(out / "shards").mkdir(parents=True, exist_ok=True)

prompts = ["hi", "help?", "a map", "tea?", "hello", "why?", "more", "ok?"]
kind = ["sure, glad to", "yes, happy to", "of course!", "gladly"]
rude = ["no. go away", "ugh, no", "not my job", "stop asking"]
rows = []
for i in range(24):
    j = i * 7 + 1
    rows.append({"prompt": prompts[j % 8], "chosen": kind[(j // 3) % 4] + " \u00e9", "rejected": rude[(j // 5) % 4]})

def write(name, records, **kw):
    (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)) if not name.startswith("shards") else None
    pq.write_table(pa.Table.from_pylist(records), out / f"{name}.parquet", **kw)

write("prefs", rows)
pq.write_table(pa.Table.from_pylist(rows[:13]), out / "shards" / "train-00000-of-00002.parquet")
pq.write_table(pa.Table.from_pylist(rows[13:]), out / "shards" / "train-00001-of-00002.parquet")
pq.write_table(pa.Table.from_pylist(rows), out / "zstd.parquet", compression="zstd")

msgs = []
for i in range(6):
    p = prompts[i]
    user = {"role": "user", "content": p}
    good = {"role": "assistant", "content": kind[i % 4]}
    bad = {"role": "assistant", "content": rude[i % 4]}
    msgs.append({"prompt": p, "chosen": [user, good], "rejected": [user, bad],
                 "messages": [user, good], "score_chosen": 8.5 + i, "prompt_id": f"id{i}"})
write("messages", msgs)
print("wrote", out)

# ifeval.parquet: tests/fixtures/ifeval/rows.jsonl (without "response") in google/IFEval's schema:
# kwargs is a list of one struct per instruction, and every struct has every argument of every
# instruction type, null where unused (as the dataset's parquet has them).
ifeval_rows = [json.loads(l) for l in (out.parent / "ifeval" / "rows.jsonl").read_text().splitlines()]
int_args = ["num_highlights", "num_words", "num_placeholders", "num_bullets", "num_sections",
            "capital_frequency", "num_paragraphs", "let_frequency", "frequency", "num_sentences",
            "nth_paragraph"]
str_args = ["relation", "prompt_to_repeat", "section_spliter", "capital_relation", "language",
            "let_relation", "letter", "end_phrase", "keyword", "postscript_marker", "first_word"]
list_args = ["keywords", "forbidden_words"]
kwargs_type = pa.struct([(k, pa.int64()) for k in int_args] + [(k, pa.string()) for k in str_args]
                        + [(k, pa.list_(pa.string())) for k in list_args])
schema = pa.schema([("key", pa.int64()), ("prompt", pa.string()),
                    ("instruction_id_list", pa.list_(pa.string())),
                    ("kwargs", pa.list_(kwargs_type))])
records = [{"key": r["key"], "prompt": r["prompt"], "instruction_id_list": r["instruction_id_list"],
            "kwargs": [{k: kw.get(k) for k in int_args + str_args + list_args} for kw in r["kwargs"]]}
           for r in ifeval_rows]
pq.write_table(pa.Table.from_pylist(records, schema=schema), out / "ifeval.parquet")
print("wrote", out / "ifeval.parquet")
