"""Build the text-to-SQL fixture: three SQLite databases in the Spider layout and 60 questions with gold SQL.

    python artifacts/sql_fixture/build_fixture.py --out_dir artifacts/runs/sql_fixture

writes ``<out_dir>/database/<db_id>/<db_id>.sqlite`` and ``<out_dir>/questions.jsonl``. Everything is generated from
the text in this file with a fixed seed, so the fixture is identical on every machine and nothing binary is
committed. The questions cover joins, aggregates, GROUP BY / HAVING, ORDER BY ... LIMIT, nested queries and one
question with BIRD-style ``evidence``.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
from pathlib import Path

SCHEMAS = {
    "school": """
        CREATE TABLE majors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, dept TEXT NOT NULL);
        CREATE TABLE students (id INTEGER PRIMARY KEY, name TEXT NOT NULL, year INTEGER, major_id INTEGER
            REFERENCES majors(id));
        CREATE TABLE courses (id INTEGER PRIMARY KEY, title TEXT NOT NULL, credits INTEGER, dept TEXT);
        CREATE TABLE enrollments (student_id INTEGER REFERENCES students(id), course_id INTEGER REFERENCES courses(id),
            grade REAL, term TEXT);
    """,
    "shop": """
        CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT, joined INTEGER);
        CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, category TEXT, price REAL);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), year INTEGER,
            status TEXT);
        CREATE TABLE order_items (order_id INTEGER REFERENCES orders(id), product_id INTEGER REFERENCES products(id),
            qty INTEGER);
    """,
    "flights": """
        CREATE TABLE airports (code TEXT PRIMARY KEY, city TEXT, country TEXT);
        CREATE TABLE airlines (id INTEGER PRIMARY KEY, name TEXT, country TEXT);
        CREATE TABLE flights (id INTEGER PRIMARY KEY, airline_id INTEGER REFERENCES airlines(id),
            origin TEXT REFERENCES airports(code), dest TEXT REFERENCES airports(code), distance INTEGER,
            duration_min INTEGER);
    """,
}

FIRST = ["Ada", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ines", "Jon", "Kai", "Lea", "Max", "Nia", "Omar"]
LAST = ["Berg", "Cole", "Dahl", "Ek", "Falk", "Gray", "Holm", "Ivers", "Juhl", "Krog"]
CITIES = ["Oslo", "Lund", "Turku", "Aarhus", "Bergen", "Malmo"]


def fill(db_id: str, conn: sqlite3.Connection, rng: random.Random) -> None:
    def people(n: int) -> list[str]:
        return [f"{rng.choice(FIRST)} {rng.choice(LAST)}" for _ in range(n)]

    if db_id == "school":
        majors = [(1, "Physics", "Science"), (2, "History", "Arts"), (3, "Biology", "Science"), (4, "Music", "Arts"),
                  (5, "Economics", "Social")]  # fmt: skip
        conn.executemany("INSERT INTO majors VALUES (?, ?, ?)", majors)
        students = [(i, name, rng.randint(1, 4), rng.randint(1, 5)) for i, name in enumerate(people(60), start=1)]
        conn.executemany("INSERT INTO students VALUES (?, ?, ?, ?)", students)
        titles = ["Mechanics", "Optics", "Ancient Rome", "Genetics", "Harmony", "Microeconomics", "Ecology",
                  "Modern Europe", "Quantum Basics", "Jazz History"]  # fmt: skip
        depts = ["Science", "Science", "Arts", "Science", "Arts", "Social", "Science", "Arts", "Science", "Arts"]
        conn.executemany(
            "INSERT INTO courses VALUES (?, ?, ?, ?)",
            [(i, t, rng.choice([3, 5, 7]), d) for i, (t, d) in enumerate(zip(titles, depts), start=1)],
        )
        rows = {(rng.randint(1, 60), rng.randint(1, 10)) for _ in range(220)}
        conn.executemany(
            "INSERT INTO enrollments VALUES (?, ?, ?, ?)",
            [(s, c, round(rng.uniform(1.0, 6.0), 1), rng.choice(["2024S", "2024F"])) for s, c in sorted(rows)],
        )
    elif db_id == "shop":
        conn.executemany(
            "INSERT INTO customers VALUES (?, ?, ?, ?)",
            [(i, n, rng.choice(CITIES), rng.randint(2015, 2024)) for i, n in enumerate(people(40), start=1)],
        )
        goods = [("Kettle", "Kitchen"), ("Pan", "Kitchen"), ("Lamp", "Home"), ("Rug", "Home"), ("Tent", "Outdoor"),
                 ("Stove", "Outdoor"), ("Mug", "Kitchen"), ("Chair", "Home"), ("Rope", "Outdoor"), ("Knife", "Kitchen")]  # fmt: skip
        conn.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            [(i, n, c, round(rng.uniform(5, 200), 2)) for i, (n, c) in enumerate(goods, start=1)],
        )
        conn.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            [
                (i, rng.randint(1, 40), rng.randint(2020, 2024), rng.choice(["shipped", "shipped", "open", "returned"]))
                for i in range(1, 121)
            ],
        )
        conn.executemany(
            "INSERT INTO order_items VALUES (?, ?, ?)",
            [(o, rng.randint(1, 10), rng.randint(1, 5)) for o in range(1, 121) for _ in range(rng.randint(1, 3))],
        )
    elif db_id == "flights":
        airports = [("OSL", "Oslo", "Norway"), ("BGO", "Bergen", "Norway"), ("ARN", "Stockholm", "Sweden"),
                    ("GOT", "Gothenburg", "Sweden"), ("CPH", "Copenhagen", "Denmark"), ("HEL", "Helsinki", "Finland"),
                    ("KEF", "Reykjavik", "Iceland")]  # fmt: skip
        conn.executemany("INSERT INTO airports VALUES (?, ?, ?)", airports)
        conn.executemany(
            "INSERT INTO airlines VALUES (?, ?, ?)",
            [
                (1, "Fjord Air", "Norway"),
                (2, "Baltic Wings", "Sweden"),
                (3, "Nordlys", "Norway"),
                (4, "Sund Jet", "Denmark"),
            ],
        )
        codes = [a[0] for a in airports]
        flights = []
        for i in range(1, 151):
            origin, dest = rng.sample(codes, 2)
            distance = rng.randint(150, 2200)
            flights.append((i, rng.randint(1, 4), origin, dest, distance, 30 + distance // 9 + rng.randint(0, 25)))
        conn.executemany("INSERT INTO flights VALUES (?, ?, ?, ?, ?, ?)", flights)


QUESTIONS = {
    "school": [
        ("How many students are there?", "SELECT COUNT(*) FROM students"),
        ("List the names of all majors in the Science department.", "SELECT name FROM majors WHERE dept = 'Science'"),
        ("What is the average grade over all enrollments?", "SELECT AVG(grade) FROM enrollments"),
        (
            "How many students are in each year? Show year and count.",
            "SELECT year, COUNT(*) FROM students GROUP BY year",
        ),
        ("Which course titles are worth 7 credits?", "SELECT title FROM courses WHERE credits = 7"),
        (
            "Show each major's name and its number of students.",
            "SELECT m.name, COUNT(s.id) FROM majors AS m JOIN students AS s ON s.major_id = m.id GROUP BY m.id",
        ),
        (
            "What are the titles of the three courses with the most enrollments?",
            "SELECT c.title FROM courses AS c JOIN enrollments AS e ON e.course_id = c.id GROUP BY c.id "
            "ORDER BY COUNT(*) DESC, c.title LIMIT 3",
        ),
        (
            "Which students (names) have an average grade above 4.5?",
            "SELECT s.name FROM students AS s JOIN enrollments AS e ON e.student_id = s.id GROUP BY s.id "
            "HAVING AVG(e.grade) > 4.5",
        ),
        (
            "What is the highest grade given in the course Genetics?",
            "SELECT MAX(e.grade) FROM enrollments AS e JOIN courses AS c ON e.course_id = c.id WHERE c.title = 'Genetics'",
        ),
        (
            "List names of students who are not enrolled in any course.",
            "SELECT name FROM students WHERE id NOT IN (SELECT student_id FROM enrollments)",
        ),
        ("How many enrollments were there in term 2024F?", "SELECT COUNT(*) FROM enrollments WHERE term = '2024F'"),
        (
            "Which department offers the most credits in total?",
            "SELECT dept FROM courses GROUP BY dept ORDER BY SUM(credits) DESC LIMIT 1",
        ),
        (
            "List the five best grades with the student name, best first.",
            "SELECT s.name, e.grade FROM enrollments AS e JOIN students AS s ON e.student_id = s.id "
            "ORDER BY e.grade DESC, s.name LIMIT 5",
        ),
        (
            "How many distinct courses has student number 7 taken?",
            "SELECT COUNT(DISTINCT course_id) FROM enrollments WHERE student_id = 7",
        ),
        (
            "Which courses have an average grade lower than the overall average grade?",
            "SELECT c.title FROM courses AS c JOIN enrollments AS e ON e.course_id = c.id GROUP BY c.id "
            "HAVING AVG(e.grade) < (SELECT AVG(grade) FROM enrollments)",
        ),
        (
            "What are the names of fourth-year students majoring in Physics?",
            "SELECT s.name FROM students AS s JOIN majors AS m ON s.major_id = m.id WHERE s.year = 4 AND m.name = 'Physics'",
        ),
        (
            "Count the enrollments per department of the course.",
            "SELECT c.dept, COUNT(*) FROM enrollments AS e JOIN courses AS c ON e.course_id = c.id GROUP BY c.dept",
        ),
        (
            "What is the lowest grade in the Arts department's courses?",
            "SELECT MIN(e.grade) FROM enrollments AS e JOIN courses AS c ON e.course_id = c.id WHERE c.dept = 'Arts'",
        ),
        (
            "Which majors have more than 12 students?",
            "SELECT m.name FROM majors AS m JOIN students AS s ON s.major_id = m.id GROUP BY m.id HAVING COUNT(*) > 12",
        ),
        ("List course titles in alphabetical order.", "SELECT title FROM courses ORDER BY title ASC"),
    ],
    "shop": [
        ("How many customers live in Oslo?", "SELECT COUNT(*) FROM customers WHERE city = 'Oslo'"),
        ("List the names of products in the Kitchen category.", "SELECT name FROM products WHERE category = 'Kitchen'"),
        ("What is the average product price?", "SELECT AVG(price) FROM products"),
        ("How many orders are there per status?", "SELECT status, COUNT(*) FROM orders GROUP BY status"),
        ("What is the most expensive product?", "SELECT name FROM products ORDER BY price DESC LIMIT 1"),
        (
            "How many orders did each city's customers place?",
            "SELECT c.city, COUNT(o.id) FROM customers AS c JOIN orders AS o ON o.customer_id = c.id GROUP BY c.city",
        ),
        (
            "Which customers placed more than 4 orders?",
            "SELECT c.name FROM customers AS c JOIN orders AS o ON o.customer_id = c.id GROUP BY c.id HAVING COUNT(*) > 4",
        ),
        (
            "What is the total quantity sold of Tent?",
            "SELECT SUM(i.qty) FROM order_items AS i JOIN products AS p ON i.product_id = p.id WHERE p.name = 'Tent'",
        ),
        (
            "List the three cheapest products with their prices.",
            "SELECT name, price FROM products ORDER BY price ASC LIMIT 3",
        ),
        (
            "Which customers have never placed an order?",
            "SELECT name FROM customers WHERE id NOT IN (SELECT customer_id FROM orders)",
        ),
        ("How many orders were placed in 2023?", "SELECT COUNT(*) FROM orders WHERE year = 2023"),
        (
            "What is the revenue (price times quantity) per product category?",
            "SELECT p.category, SUM(p.price * i.qty) FROM order_items AS i JOIN products AS p ON i.product_id = p.id "
            "GROUP BY p.category",
        ),
        (
            "Which products cost more than the average price?",
            "SELECT name FROM products WHERE price > (SELECT AVG(price) FROM products)",
        ),
        ("How many returned orders are there?", "SELECT COUNT(*) FROM orders WHERE status = 'returned'"),
        (
            "Which city has the most customers?",
            "SELECT city FROM customers GROUP BY city ORDER BY COUNT(*) DESC LIMIT 1",
        ),
        (
            "List the ids of the five most recent orders (latest year first, then highest id).",
            "SELECT id FROM orders ORDER BY year DESC, id DESC LIMIT 5",
        ),
        ("What is the largest quantity of one product in a single order line?", "SELECT MAX(qty) FROM order_items"),
        (
            "How many distinct products were ever ordered by customers from Lund?",
            "SELECT COUNT(DISTINCT i.product_id) FROM order_items AS i JOIN orders AS o ON i.order_id = o.id "
            "JOIN customers AS c ON o.customer_id = c.id WHERE c.city = 'Lund'",
        ),
        ("Which customers joined before 2018? Show names.", "SELECT name FROM customers WHERE joined < 2018"),
        (
            "Which categories have an average price above 100?",
            "SELECT category FROM products GROUP BY category HAVING AVG(price) > 100",
        ),
    ],
    "flights": [
        ("How many flights are there?", "SELECT COUNT(*) FROM flights"),
        ("Which airports are in Norway? Give their codes.", "SELECT code FROM airports WHERE country = 'Norway'"),
        ("What is the average flight distance?", "SELECT AVG(distance) FROM flights"),
        (
            "How many flights does each airline operate? Show the airline name.",
            "SELECT a.name, COUNT(*) FROM flights AS f JOIN airlines AS a ON f.airline_id = a.id GROUP BY a.id",
        ),
        ("What is the longest flight's distance?", "SELECT MAX(distance) FROM flights"),
        (
            "List the ids of the three shortest flights from OSL.",
            "SELECT id FROM flights WHERE origin = 'OSL' ORDER BY distance ASC, id LIMIT 3",
        ),
        (
            "Which cities have flights departing to Reykjavik (KEF)?",
            "SELECT DISTINCT p.city FROM flights AS f JOIN airports AS p ON f.origin = p.code WHERE f.dest = 'KEF'",
        ),
        (
            "Which airlines have an average flight duration above 150 minutes?",
            "SELECT a.name FROM airlines AS a JOIN flights AS f ON f.airline_id = a.id GROUP BY a.id "
            "HAVING AVG(f.duration_min) > 150",
        ),
        (
            "How many flights go from Sweden to Norway?",
            "SELECT COUNT(*) FROM flights AS f JOIN airports AS o ON f.origin = o.code JOIN airports AS d ON f.dest = d.code "
            "WHERE o.country = 'Sweden' AND d.country = 'Norway'",
        ),
        (
            "Which airports are never the origin of a Sund Jet flight?",
            "SELECT code FROM airports WHERE code NOT IN (SELECT origin FROM flights WHERE airline_id = 4)",
        ),
        (
            "What is the total distance flown by Fjord Air?",
            "SELECT SUM(f.distance) FROM flights AS f JOIN airlines AS a ON f.airline_id = a.id WHERE a.name = 'Fjord Air'",
        ),
        (
            "Which destination airport receives the most flights?",
            "SELECT dest FROM flights GROUP BY dest ORDER BY COUNT(*) DESC LIMIT 1",
        ),
        (
            "List flights longer than 2000 km with origin and destination.",
            "SELECT origin, dest FROM flights WHERE distance > 2000",
        ),
        (
            "How many flights are operated by Norwegian airlines?",
            "SELECT COUNT(*) FROM flights WHERE airline_id IN (SELECT id FROM airlines WHERE country = 'Norway')",
        ),
        (
            "What is the shortest duration among flights from CPH to HEL?",
            "SELECT MIN(duration_min) FROM flights WHERE origin = 'CPH' AND dest = 'HEL'",
        ),
        (
            "Count flights per origin country.",
            "SELECT p.country, COUNT(*) FROM flights AS f JOIN airports AS p ON f.origin = p.code GROUP BY p.country",
        ),
        (
            "List the five longest flights (id and distance), longest first.",
            "SELECT id, distance FROM flights ORDER BY distance DESC, id LIMIT 5",
        ),
        ("Which airlines are based in Norway?", "SELECT name FROM airlines WHERE country = 'Norway'"),
        (
            "Which routes (origin, destination) are flown more than twice?",
            "SELECT origin, dest FROM flights GROUP BY origin, dest HAVING COUNT(*) > 2",
        ),
        ("How many long-haul flights are there?", "SELECT COUNT(*) FROM flights WHERE distance > 1500"),
    ],
}
EVIDENCE = {("flights", 19): "long-haul refers to distance > 1500"}


def build(out_dir: Path, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    rows = []
    for db_id, schema in SCHEMAS.items():
        path = out_dir / "database" / db_id / f"{db_id}.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".sqlite.tmp")
        tmp.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        conn.executescript(schema)
        fill(db_id, conn, rng)
        conn.commit()
        conn.close()
        tmp.replace(path)
        for i, (question, gold) in enumerate(QUESTIONS[db_id]):
            row = {"id": f"{db_id}-{i:02d}", "db_id": db_id, "question": question, "gold_sql": gold}
            if (db_id, i) in EVIDENCE:
                row["evidence"] = EVIDENCE[(db_id, i)]
            rows.append(row)
    (out_dir / "questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out_dir", type=Path, default=Path("artifacts/runs/sql_fixture"))
    args = parser.parse_args()
    out = build(args.out_dir)
    print(f"wrote {out / 'database'} and {out / 'questions.jsonl'}")


if __name__ == "__main__":
    main()
