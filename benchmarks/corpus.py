"""Deterministic English benchmark corpus: documents of 5-120 words and short queries.

The texts are built from fixed word lists with :class:`random.Random` seeded by an
integer, so every Python version, platform and ``PYTHONHASHSEED`` gives the same
corpus, and nothing is downloaded.

    python benchmarks/corpus.py                 # prints counts and a few samples
    python benchmarks/corpus.py --jsonl out.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import sys

__all__ = ["DOCUMENTS", "QUERIES", "SEED", "documents", "queries"]

SEED = 20240611
DOCUMENTS = 2000
QUERIES = 200

_TOPIC_TEXT: dict[str, dict[str, str]] = {
    "software": {
        "nouns": (
            "server database index query cache thread process library compiler function "
            "module package release bug patch test pipeline container cluster request response "
            "latency throughput memory disk network protocol schema migration token parser "
            "scheduler queue worker log metric dashboard deployment repository branch commit"
        ),
        "verbs": (
            "deploys indexes caches compiles parses serialises rewrites profiles benchmarks "
            "refactors tests ships merges reverts monitors restarts scales queries logs"
        ),
        "adjs": (
            "fast slow concurrent distributed stable flaky legacy modern typed async "
            "immutable portable lightweight verbose minimal robust cached"
        ),
    },
    "cooking": {
        "nouns": (
            "recipe oven pan sauce garlic onion butter flour dough bread soup stew salad "
            "pepper salt lemon basil tomato rice pasta cheese yogurt honey spice kitchen knife "
            "dinner breakfast dessert pastry broth marinade grill skillet"
        ),
        "verbs": (
            "bakes roasts simmers chops whisks stirs seasons grills toasts ferments "
            "marinates kneads slices tastes serves"
        ),
        "adjs": (
            "crispy tender savory sweet spicy fresh smoky creamy golden tangy hearty rich "
            "light seasonal homemade"
        ),
    },
    "travel": {
        "nouns": (
            "train station airport ticket hotel museum city village harbor mountain "
            "river beach trail map guide passport luggage ferry bridge market cathedral valley "
            "island coast border journey route schedule"
        ),
        "verbs": (
            "visits crosses books explores photographs hikes boards reaches tours "
            "recommends discovers maps"
        ),
        "adjs": (
            "crowded quiet scenic remote historic coastal rainy sunny busy affordable "
            "charming ancient vibrant"
        ),
    },
    "finance": {
        "nouns": (
            "market bond stock rate inflation budget loan mortgage dividend portfolio "
            "fund bank investor tax revenue profit earnings forecast currency deficit pension "
            "asset risk quarter balance ledger invoice"
        ),
        "verbs": (
            "raises lowers invests borrows hedges forecasts audits reports trades "
            "allocates rebalances approves"
        ),
        "adjs": (
            "volatile quarterly annual fiscal prudent risky diversified liquid "
            "profitable conservative global domestic"
        ),
    },
    "science": {
        "nouns": (
            "cell protein gene enzyme planet orbit telescope galaxy molecule atom "
            "experiment hypothesis sample measurement climate ocean glacier fossil species "
            "neuron vaccine particle laser crystal reaction sensor"
        ),
        "verbs": (
            "observes measures predicts synthesises detects models simulates replicates "
            "publishes tests isolates sequences"
        ),
        "adjs": (
            "precise microscopic thermal magnetic organic stellar genetic experimental "
            "peer-reviewed statistical novel"
        ),
    },
    "sports": {
        "nouns": (
            "team coach player match season league goal score stadium referee tournament "
            "championship injury training marathon race bicycle racket ball field record "
            "fan victory defeat"
        ),
        "verbs": (
            "wins loses trains scores defends sprints tackles celebrates qualifies "
            "coaches substitutes"
        ),
        "adjs": (
            "dominant young veteran aggressive tactical undefeated exhausted talented "
            "resilient historic"
        ),
    },
}

_SUBJECTS = (
    "the team",
    "our engineer",
    "a small startup",
    "the new manager",
    "every visitor",
    "my neighbour",
    "the committee",
    "a local chef",
    "the researcher",
    "the whole family",
    "this guide",
    "the report",
)
_CONNECTORS = (
    "However,",
    "Meanwhile,",
    "As a result,",
    "In practice,",
    "Surprisingly,",
    "Later that week,",
    "For example,",
    "Still,",
)
_ADVERBS = ("quickly", "carefully", "rarely", "often", "quietly", "openly", "slowly", "eagerly")
_PREPOSITIONS = ("with", "without", "after", "before", "during", "near", "under", "across")
_TOPICS = {
    topic: {kind: words.split() for kind, words in table.items()}
    for topic, table in _TOPIC_TEXT.items()
}
_QUERY_TEMPLATES = (
    "how to {verb} a {adj} {noun}",
    "best {noun} for {noun2}",
    "what is a {adj} {noun}",
    "why does the {noun} {verb} the {noun2}",
    "{adj} {noun} near the {noun2}",
    "compare {noun} and {noun2} for a {adj} {noun3}",
    "when should I {verb} my {noun}",
    "cheap {adj} {noun} with {adj2} {noun2} this year",
    "tips to {verb} the {noun} without a {noun2}",
    "is a {adj} {noun} better than a {adj2} {noun2} for {noun3}",
)


def _sentence(rng: random.Random, words: dict[str, list[str]]) -> str:
    noun, noun2 = rng.sample(words["nouns"], 2)
    verb = rng.choice(words["verbs"])
    adj = rng.choice(words["adjs"])
    parts = [rng.choice(_SUBJECTS), verb, "the", adj, noun]
    if rng.random() < 0.6:
        parts += [rng.choice(_PREPOSITIONS), "the", noun2]
    if rng.random() < 0.4:
        parts.append(rng.choice(_ADVERBS))
    if rng.random() < 0.25:
        parts.insert(0, rng.choice(_CONNECTORS))
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def _base_form(verb: str) -> str:
    if verb.endswith("ies"):
        return verb[:-3] + "y"
    if verb.endswith(("shes", "ches", "xes", "sses", "oes")):
        return verb[:-2]
    return verb[:-1]


def documents(n: int = DOCUMENTS, seed: int = SEED) -> list[str]:
    """*n* English texts whose word counts are spread evenly over 5 to 120 words."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    out = []
    for _ in range(n):
        words = _TOPICS[rng.choice(topics)]
        target = rng.randint(5, 120)
        tokens: list[str] = []
        while len(tokens) < target:
            tokens += _sentence(rng, words).split()
        tokens = tokens[:target]
        text = " ".join(tokens)
        out.append(text if text.endswith(".") else text.rstrip(",") + ".")
    return out


def queries(n: int = QUERIES, seed: int = SEED + 1) -> list[str]:
    """*n* short search queries of 3 to 12 words."""
    rng = random.Random(seed)
    topics = sorted(_TOPICS)
    out = []
    while len(out) < n:
        words = _TOPICS[rng.choice(topics)]
        noun, noun2, noun3 = rng.sample(words["nouns"], 3)
        adj, adj2 = rng.sample(words["adjs"], 2)
        verb = _base_form(rng.choice(words["verbs"]))
        query = rng.choice(_QUERY_TEMPLATES).format(
            noun=noun, noun2=noun2, noun3=noun3, adj=adj, adj2=adj2, verb=verb
        )
        if 3 <= len(query.split()) <= 12:
            out.append(query)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jsonl", help="write {'kind', 'text'} lines to this file")
    args = parser.parse_args(argv)
    docs, qs = documents(), queries()
    if args.jsonl:
        with open(args.jsonl, "w", encoding="utf-8") as fh:
            for kind, texts in (("document", docs), ("query", qs)):
                for text in texts:
                    fh.write(json.dumps({"kind": kind, "text": text}) + "\n")
    lengths = [len(t.split()) for t in docs]
    qlengths = [len(q.split()) for q in qs]
    print(f"{len(docs)} documents, {min(lengths)}-{max(lengths)} words, {sum(lengths)} words")
    print(f"{len(qs)} queries, {min(qlengths)}-{max(qlengths)} words")
    for text in docs[:2] + qs[:3]:
        print("  ", text[:110])
    return 0


if __name__ == "__main__":
    sys.exit(main())
