"""Regenerate the embedded demo data (deterministic): ``python artifacts/demo/make_demo_data.py``.

* ``corpus.txt``  — plain text the tiny student's tokenizer is trained on.
* ``qa.json``     — the Q/A format (``{"train": [{"Question", "Answer"}], "val": [...], "test": [...]}``), a learnable
  mapping (facts about invented towns) so a few hundred steps visibly lower the loss.
* ``records.jsonl`` — web documents (id, url, title, body, queries) for the teacher stage's query-generation prompt:
  each a random town / river / product / roof colour / size in one of several wordings, so the teacher's answers
  depend on the document and a student has something to learn.
* ``heldout.jsonl`` — more documents of the same kind that the student never sees in training: none shares its
  (town, river, product) with a training document. The fidelity report scores the student on these.
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
    lines = lines[:1500]

    train, heldout = documents(random.Random(1))
    lines += [f"{r['title']}\n{r['body']}\n{r['title'].lower()}" for r in train[:300]]
    (HERE / "corpus.txt").write_text("\n".join(lines) + "\n")
    for name, rows in (("records.jsonl", train), ("heldout.jsonl", heldout)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


TITLES = ["{town} — a town on the {river}", "Visiting {town} on the {river}", "{town}, a market town by the {river}"]
SENTENCES = [
    "{town} lies on the river {river}.",
    "Visitors remember the {color} roofs.",
    "The market of {town} is known for {good}.",
    "Around {people} people live in {town}.",
]


def documents(rng: random.Random, n_train: int = 320, n_heldout: int = 80) -> tuple[list[dict], list[dict]]:
    """Training and held-out documents; a held-out one never shares (town, river, product) with a training one."""
    combos = [(t, r, g) for t in TOWNS for r in RIVERS for g in GOODS]
    rng.shuffle(combos)
    rows = []
    for i, (town, river, good) in enumerate(combos[: n_train + n_heldout]):
        x = {"town": town, "river": river, "good": good, "color": rng.choice(COLORS)}
        x["people"] = str(rng.randrange(2, 99) * 100)
        middle = SENTENCES[1:3]
        rng.shuffle(middle)
        body = " ".join(s.format(**x) for s in [SENTENCES[0], *middle, SENTENCES[3]])
        split, n = ("doc", i) if i < n_train else ("new", i - n_train)
        rows.append(
            {
                "id": f"{split}-{n:03d}",
                "url": f"https://towns.example/{town.lower()}/{i}",
                "title": rng.choice(TITLES).format(**x),
                "body": body,
                "queries": [f"{town.lower()} {good}", f"river {river.lower()}"],
            }
        )
    return rows[:n_train], rows[n_train:]


if __name__ == "__main__":
    main()
