"""The built-in text sets: int8 calibration, and the parity report (disjoint from it)."""

from __future__ import annotations

__all__ = ["CALIBRATION_TEXTS", "PARITY_TEXTS"]

_FILLER = (
    "the index stores vectors for every document and answers nearest neighbour "
    "queries in a few milliseconds while the model keeps running on the cpu"
)


def _words(n: int, start: int = 0) -> str:
    base = _FILLER.split()
    return " ".join(base[(start + i) % len(base)] for i in range(n))


#: Texts the int8 export measures activation ranges on (disjoint from PARITY_TEXTS).
CALIBRATION_TEXTS: tuple[str, ...] = (
    "OK",
    "?",
    "a",
    "",
    "yes please",
    "How do I reset my password?",
    "cheap flights to Lisbon in May",
    "The committee approved the annual budget after a long debate.",
    "Stir the sauce slowly and season it with salt, pepper and fresh basil.",
    "Gradient descent updates the weights in the direction that lowers the loss.",
    "東京の天気は明日晴れるでしょう。",
    "Le café est fermé le dimanche, mais la boulangerie reste ouverte.",
    "Привет, как дела? Всё хорошо.",
    "🚀 launch day! 🎉🎉",
    "for i in range(10):\n    total += i * i",
    "<div class='card'><h2>Title</h2><p>Body text &amp; more</p></div>",
    "SELECT id, name FROM users WHERE created_at > NOW() - INTERVAL '7 days';",
    "Die Mannschaft gewann das Spiel in der letzten Minute.",
    _words(40),
    _words(120, 7),
    _words(400, 3),
    "Q3 revenue grew 12% year over year to $4.2B, beating estimates by 3 cents a share.",
    "The patient reported mild headaches and was prescribed 200 mg ibuprofen.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
)

#: Texts the parity report compares the export with the fp32 PyTorch model on.
PARITY_TEXTS: tuple[str, ...] = (
    "",
    "   ",
    "hi",
    "Thanks!",
    "What is the capital of France?",
    "best budget laptop for students",
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on stage in front of a large crowd.",
    "Interest rates were left unchanged at the central bank's March meeting.",
    "Mix the flour and butter until the dough is smooth, then chill it for an hour.",
    "The spacecraft entered orbit around Mars after a seven-month journey.",
    "北京是中国的首都。",
    "서울은 한국의 수도입니다.",
    "Ελληνικά και русский текст вместе",
    "mañana habrá una reunión en la oficina de Málaga",
    "naïve façade, café au lait, crème brûlée",
    "emoji only 😀😃😄😁",
    "مرحبا بالعالم",
    "def add(a: int, b: int) -> int:\n    return a + b",
    "<html><body><p>Hello <b>world</b></p></body></html>",
    "https://example.com/path?query=1&lang=en#section",
    "user@example.com wrote: see ticket #4521 for details",
    "1 2 3 4 5 6 7 8 9 10",
    "ALL CAPS HEADLINE ABOUT THE ELECTION RESULTS",
    "tabs\tand\nnewlines\r\nmixed",
    _words(25, 2),
    _words(70, 5),
    _words(180, 1),
    _words(300, 4),
    _words(600, 9),
)
