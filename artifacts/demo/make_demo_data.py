"""Regenerate the embedded demo data (deterministic): ``python artifacts/demo/make_demo_data.py``.

* ``corpus.txt``  — plain text the tiny student's tokenizer is trained on.
* ``qa.json``     — the Q/A format (``{"train": [{"Question", "Answer"}], "val": [...], "test": [...]}``), a learnable
  mapping (facts about invented towns) so a few hundred steps visibly lower the loss.
* ``records.jsonl`` — web documents (id, url, title, body, queries) for the teacher stage's query-generation prompt.
"""

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TOWNS = [
    "Avalon",
    "Brindle",
    "Corvane",
    "Dunmere",
    "Elsworth",
    "Farrow",
    "Glenhollow",
    "Harrowgate",
    "Ivel",
    "Jasper",
    "Kestrel",
    "Lindale",
    "Marrow",
    "Northby",
    "Oakhurst",
    "Pellam",
    "Quarry",
    "Ravensby",
    "Stillwater",
    "Thorne",
]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "silver", "golden"]
GOODS = ["apples", "wool", "copper", "salt", "honey", "glass", "timber", "cheese", "silk", "pottery"]
RIVERS = ["Aire", "Bure", "Colne", "Dove", "Exe", "Frome", "Glen", "Hull", "Isis", "Kennet"]


def facts(rng: random.Random) -> dict[str, dict[str, str]]:
    return {
        t: {
            "color": rng.choice(COLORS),
            "good": rng.choice(GOODS),
            "river": rng.choice(RIVERS),
            "people": str(rng.randrange(2, 99) * 100),
        }
        for t in TOWNS
    }


def qa_pairs(f: dict) -> list[dict[str, str]]:
    pairs = []
    for town, x in f.items():
        pairs += [
            {"Question": f"What color are the roofs in {town}?", "Answer": f"The roofs in {town} are {x['color']}."},
            {"Question": f"What does {town} sell?", "Answer": f"{town} sells {x['good']}."},
            {"Question": f"Which river runs through {town}?", "Answer": f"The river {x['river']} runs through {town}."},
            {"Question": f"How many people live in {town}?", "Answer": f"About {x['people']} people live in {town}."},
        ]
    return pairs


def main() -> None:
    rng = random.Random(0)
    f = facts(rng)
    pairs = qa_pairs(f)
    rng.shuffle(pairs)
    n = len(pairs)
    qa = {"train": pairs[: int(0.8 * n)], "val": pairs[int(0.8 * n) : int(0.9 * n)], "test": pairs[int(0.9 * n) :]}
    (HERE / "qa.json").write_text(json.dumps(qa, indent=1) + "\n")

    lines = []
    for _ in range(40):
        for p in pairs:
            lines.append(f"Question: {p['Question']}\nAnswer: {p['Answer']}")
    for town, x in f.items():
        lines.append(
            f"{town} is a small town on the river {x['river']}. Its roofs are {x['color']} and it is known "
            f"for {x['good']}. About {x['people']} people live there."
        )
    rng.shuffle(lines)
    (HERE / "corpus.txt").write_text("\n".join(lines[:1500]) + "\n")

    with open(HERE / "records.jsonl", "w") as fh:
        for i, (town, x) in enumerate(f.items()):
            rec = {
                "id": f"doc-{i:03d}",
                "url": f"https://towns.example/{town.lower()}",
                "title": f"{town} — a town on the {x['river']}",
                "body": f"{town} lies on the river {x['river']}. Visitors remember the {x['color']} roofs and the "
                f"market for {x['good']}. Around {x['people']} people live in {town}.",
                "queries": [f"{town} {x['good']}", f"river {x['river']} towns"],
            }
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
