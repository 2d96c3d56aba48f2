"""Which language a row is in (wrapper/data/langs.py): the script first, lingua only where the
script is shared, so that Kazakh and Russian rows are counted, split and evaluated apart, and
plain Russian or English rows never wait for lingua."""

from __future__ import annotations

import json

import pytest

from wrapper.data import langs
from wrapper.data.langs import GUESS_NOTE, guess_language, language_of, script_language

from tests.support.runner import ftw_in_process

# The Constitution of the Republic of Kazakhstan (articles 1, 2, 3, 7, 12, 14-16, 20, 24, 30)
# in its Kazakh and Russian texts, and two tenancy questions.
KAZAKH = [
    "Қазақстан Республикасы өзін демократиялық, зайырлы, құқықтық және әлеуметтік мемлекет ретінде орнықтырады, "
    "оның ең қымбат қазынасы – адам және адамның өмірі, құқықтары мен бостандықтары.",
    "Қазақстан Республикасы – президенттік басқару нысанындағы біртұтас мемлекет.",
    "Мемлекеттік биліктің бірден-бір бастауы – халық.",
    "Қазақстан Республикасындағы мемлекеттік тіл – қазақ тілі.",
    "Мемлекеттік ұйымдарда және жергілікті өзін-өзі басқару органдарында орыс тілі ресми түрде қазақ тілімен тең "
    "қолданылады.",
    "Адам құқықтары мен бостандықтары әркімге тумысынан жазылған, олар абсолютті деп танылады, олардан ешкім айыра "
    "алмайды.",
    "Заң мен сот алдында жұрттың бәрі тең.",
    "Әркімнің өмір сүруге құқығы бар.",
    "Әркімнің жеке басының бостандығына құқығы бар.",
    "Сөз бен шығармашылық еркіндігіне кепілдік беріледі. Цензураға тыйым салынады.",
    "Әркімнің еңбек ету бостандығына, қызмет пен кәсіп түрін еркін таңдауына құқығы бар.",
    "Мемлекеттік оқу орындарында азаматтардың тегін орта білім алуына кепілдік беріледі. Орта білім алу міндетті.",
    "Жалға алушы кепіл ақшасын қашан қайтарып алады?",
    "Жалдау шартын мерзімінен бұрын қалай бұзуға болады?",
]
RUSSIAN = [
    "Республика Казахстан утверждает себя демократическим, светским, правовым и социальным государством, высшими "
    "ценностями которого являются человек, его жизнь, права и свободы.",
    "Республика Казахстан является унитарным государством с президентской формой правления.",
    "Единственным источником государственной власти является народ.",
    "В Республике Казахстан государственным является казахский язык.",
    "В государственных организациях и органах местного самоуправления наравне с казахским официально употребляется "
    "русский язык.",
    "Права и свободы человека принадлежат каждому от рождения, признаются абсолютными и неотчуждаемыми.",
    "Все равны перед законом и судом.",
    "Каждый имеет право на жизнь.",
    "Каждый имеет право на личную свободу.",
    "Свобода слова и творчества гарантируется. Цензура запрещается.",
    "Каждый имеет право на свободу труда, свободный выбор рода деятельности и профессии.",
    "Гарантируется бесплатное среднее образование в государственных учебных заведениях. Среднее образование "
    "обязательно.",
    "Когда арендатор получит обратно свой залог?",
    "Как досрочно расторгнуть договор аренды?",
]


@pytest.fixture
def no_lingua(monkeypatch):
    """lingua may not be asked: the script alone must settle the row."""

    def refuse(script):
        raise AssertionError(f"lingua asked ({script}) where the script settles it")

    monkeypatch.setattr(langs, "_detector", refuse)


@pytest.mark.parametrize("text", KAZAKH, ids=range(len(KAZAKH)))
def test_kazakh_is_kazakh(text):
    assert script_language(text.encode()) == "ru"  # what the script alone said: every Cyrillic row was ru
    assert language_of(text) == "kk"


@pytest.mark.parametrize("text", RUSSIAN, ids=range(len(RUSSIAN)))
def test_russian_is_russian_without_lingua(no_lingua, text):
    assert language_of(text) == "ru"


def test_russian_that_quotes_kazakh_is_russian():
    text = (
        "Закон «Қазақстан Республикасындағы тіл туралы» был принят в 1997 году; он определяет правовые основы "
        "функционирования языков и обязанности государства по их развитию."
    )
    assert language_of(text) == "ru"


@pytest.mark.parametrize(
    "text, lang",
    [
        ("Усі люди народжуються вільними і рівними у своїй гідності та правах.", "uk"),
        ("Усе людзі нараджаюцца свабоднымі і роўнымі ў сваёй годнасці і правах.", "be"),
        ("Сва људска бића рађају се слободна и једнака у достојанству и правима.", "sr"),
        ("Хүн бүр төрөхөөсөө эрх чөлөөтэй, адил тэгш нэр төр, эрхтэй байдаг.", "mn"),
        ("Die Würde des Menschen ist unantastbar. Sie zu achten und zu schützen ist Verpflichtung aller Gewalt.", "de"),
        ("Les hommes naissent et demeurent libres et égaux en droits.", "fr"),
        ("Bütün insanlar hür, haysiyet ve haklar bakımından eşit doğarlar.", "tr"),
        # English that names a café or São Paulo stays English (lingua alone says cy and fr here)
        ("The café opened at dawn, and the tenant paid the deposit to Zoë.", "en"),
        ("José and François met in São Paulo to sign the agreement.", "en"),
    ],
)
def test_other_languages_that_share_a_script(text, lang):
    assert language_of(text) == lang


@pytest.mark.parametrize(
    "text, lang",
    [
        ("Who guards the Amber Gate of Veloria?", "en"),
        ("人人生而自由，在尊严和权利上一律平等。", "zh"),
        ("すべての人間は、生まれながらにして自由である。", "ja"),
        ("모든 인간은 태어날 때부터 자유롭다.", "ko"),
        ("Όλοι οι άνθρωποι γεννιούνται ελεύθεροι.", "el"),
        ("12345 -- 678", "unknown"),
        ("", "unknown"),
    ],
)
def test_the_script_alone_settles_the_rest(no_lingua, text, lang):
    assert language_of(text) == lang


def test_a_sample_cut_inside_a_letter_is_read():
    """scan.py passes the first 1,000 bytes, which may end inside a two-byte letter."""
    text = " ".join(KAZAKH)
    sample = text.encode()[:999]
    assert text.encode()[999] >= 0x80  # the cut falls inside a letter
    assert guess_language(sample) == "kk"
    assert guess_language(text.encode()) == "kk"


# --- through the commands ----------------------------------------------------------------------


def rows_of(sentences: list[str]) -> list[dict]:
    """Alpaca rows from a list of sentences: each asks one and answers with the next."""
    return [
        {"instruction": sentence, "input": "", "output": sentences[(i + 1) % len(sentences)]}
        for i, sentence in enumerate(sentences)
    ]


@pytest.fixture
def mixed_file(tmp_path):
    rows = [row for pair in zip(rows_of(KAZAKH), rows_of(RUSSIAN)) for row in pair]
    path = tmp_path / "ru_kk.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def invoke(*args: str) -> str:
    ran = ftw_in_process(*args)
    assert ran.code == 0, ran.output
    return ran.output


def test_check_counts_kazakh_and_russian_apart(mixed_file):
    out = invoke("data", "check", "--recipe", "demo", str(mixed_file))
    assert f"alpaca: {2 * len(KAZAKH)} rows read, {2 * len(KAZAKH)} valid, 0 invalid" in out
    assert f"languages: kk {len(KAZAKH)} (guessed), ru {len(RUSSIAN)} (guessed)" in out
    assert "languages " + " ".join(GUESS_NOTE.split()) in out


def test_prepare_splits_kazakh_and_russian_apart(mixed_file, runs_dir):
    out = invoke("data", "prepare", "--recipe", "demo", "--data", str(mixed_file), "--run", "kkru")
    data = runs_dir / "kkru" / "data"
    train = [json.loads(line) for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    val = [json.loads(line) for line in (data / "val.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(train) + len(val) == 2 * len(KAZAKH)
    assert {row["lang"] for row in val} == {"kk", "ru"}  # validation picks in each language
    for row in train + val:
        question = row["conversations"][0]["value"]
        assert row["lang"] == ("kk" if question in KAZAKH else "ru"), question
    assert "split (seed 42, val_ratio 0.1, per language): train 24 (kk 12, ru 12), val 4 (kk 2, ru 2)" in out
    split = json.loads((data / "prepared.json").read_text(encoding="utf-8"))["split"]
    assert split == {"train": {"kk": 12, "ru": 12}, "val": {"kk": 2, "ru": 2}}
