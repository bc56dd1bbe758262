"""wikienv semantics over a local corpus: search / lookup / finish observations, title matching, BM25
similar titles (cached index), corpus loading errors; the HotpotQA offline corpus covers every question."""

from __future__ import annotations

import json

import pytest

from slmkit.agents.local_wiki import LocalWiki, load_corpus
from slmkit.agents.wiki import WikiTools, page_sentences
from slmkit.errors import SlmkitError

PAGES = {
    "Ada Lovelace": "Ada Lovelace was an English mathematician. She worked on the Analytical Engine. "
                    "She is known as the first programmer. Her father was Lord Byron. She died in 1852. "
                    "The Engine was designed by Charles Babbage.\nA second paragraph mentions the engine again",
    "Charles Babbage": "Charles Babbage was an English polymath. He designed the Analytical Engine.",
    "Lord Byron": "Lord Byron was an English poet.",
}


@pytest.fixture
def wiki(tmp_path):
    return WikiTools(LocalWiki(PAGES, cache=tmp_path / "bm25"))


def test_search_found_gives_first_five_wikienv_sentences(wiki):
    obs, done, _ = wiki.step("search[Ada Lovelace]")
    assert not done
    # wikienv: split on '. ', strip, add '.', keep 5, join with spaces
    assert obs == ("Ada Lovelace was an English mathematician. She worked on the Analytical Engine. "
                   "She is known as the first programmer. Her father was Lord Byron. She died in 1852.")


def test_search_case_folded_title_opens_the_page(wiki):
    assert wiki.step("search[ada  lovelace]")[0].startswith("Ada Lovelace was")
    assert wiki.step("search[Lord_Byron]")[0] == "Lord Byron was an English poet.."


def test_search_not_found_lists_similar_titles_like_wikienv(wiki):
    wiki.step("search[Ada Lovelace]")
    obs = wiki.step("search[analytical engine designer]")[0]
    assert obs.startswith("Could not find analytical engine designer. Similar: [")
    titles = eval(obs[len("Could not find analytical engine designer. Similar: "):-1])  # a Python list repr, as wikienv
    assert set(titles) == {"Ada Lovelace", "Charles Babbage"}
    # the old page is kept after a failed search: lookup still works on it
    assert wiki.step("lookup[Byron]")[0] == "(Result 1 / 1) Her father was Lord Byron."
    assert wiki.step("search[zzzz qqqq]")[0] == "Could not find zzzz qqqq. Similar: []."


def test_lookup_counts_then_no_more_results(wiki):
    assert wiki.step("lookup[engine]")[0] == "No more results.\n"  # no page yet
    wiki.step("search[Ada Lovelace]")
    expected = ["She worked on the Analytical Engine.", "The Engine was designed by Charles Babbage..",  # wikienv: paragraph end + "."
                "A second paragraph mentions the engine again."]
    assert [s for s in page_sentences(PAGES["Ada Lovelace"]) if "engine" in s.lower()] == expected
    got = [wiki.step("lookup[engine]")[0] for _ in range(4)]
    assert got == [f"(Result {i} / 3) {s}" for i, s in enumerate(expected, 1)] + ["No more results.\n"]
    assert wiki.step("lookup[ENGINE]")[0] == "(Result 1 / 3) " + expected[0]  # a new keyword restarts


def test_finish_think_invalid_and_after_finish(wiki):
    assert wiki.step("think[hmm]")[0] == "Nice thought."
    obs, done, info = wiki.step("Search[Ada Lovelace]")  # capital S: wikienv is case-sensitive
    assert obs == "Invalid action: Search[Ada Lovelace]" and info["invalid"] and not done
    obs, done, info = wiki.step("finish[Lord Byron]")
    assert done and info["answer"] == "Lord Byron"
    assert wiki.step("search[Ada Lovelace]")[1] is True  # already finished: nothing more happens


def test_closed_book_tools_reject_search():
    tools = WikiTools(None, ("finish", "think"))
    obs, done, info = tools.step("search[Ada Lovelace]")
    assert obs == "Invalid action: search[Ada Lovelace]" and info["invalid"]
    assert tools.step("finish[SUPPORTS]")[1]


def test_bm25_index_is_cached(tmp_path):
    a = LocalWiki(PAGES, cache=tmp_path)
    first = a.similar("poet", 5)
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and (built[0] / "params.index.json").exists()
    b = LocalWiki(PAGES, cache=tmp_path)
    assert b.similar("poet", 5) == first == ["Lord Byron"]
    assert list(tmp_path.iterdir()) == built


def test_load_corpus_folder_and_errors(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"title": "X", "sentences": ["One.", " Two."]}) + "\n"
                                    + json.dumps({"title": "Y", "text": "Why."}) + "\n")
    pages = load_corpus(folder)
    assert pages == {"X": "One. Two.", "Y": "Why."}
    with pytest.raises(SlmkitError, match="corpus not found"):
        load_corpus(tmp_path / "missing")
    (folder / "b.jsonl").write_text('{"title": 3}\n')
    with pytest.raises(SlmkitError, match=r"b.jsonl:1: a page needs a string 'title'"):
        load_corpus(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlmkitError, match="no .jsonl/.json files"):
        load_corpus(empty)


def test_hotpotqa_offline_corpus_holds_every_supporting_page(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    from slmkit.agents.hotpotqa import load_environment

    env, fmt = load_environment()
    tasks = env.tasks()
    assert len(tasks) == 198 and env.mode == "offline-distractor" and not env.comparable
    ranks = [t.data["react_rank"] for t in tasks]
    assert ranks == sorted(ranks)  # ReAct's sample order
    for t in tasks:
        env.reset(t)
        for title in t.data["supporting_titles"]:
            obs = env.step(f"search[{title}]").observation
            assert not obs.startswith("Could not find"), (t.id, title)


def test_live_wiki_reads_search_pages_as_wikienv(monkeypatch):
    """The HTML reading of --live-wiki on saved-page-shaped strings (the network itself is never used in
    tests): result headings → similar titles; an article → its <p>/<ul> blocks of more than two words;
    a disambiguation page → searched again as [entity]."""
    from slmkit.agents.live_wiki import LiveWiki

    pages = {
        "Beautiful": "<div class='mw-search-result-heading'><a>Beautiful (Christina Aguilera song)</a></div>"
                     "<div class='mw-search-result-heading'><a>Life Is Beautiful</a></div>",
        "Mercury": "<p>Mercury may refer to:</p><ul><li>Mercury (planet)</li></ul>",
        "[Mercury]": "<p>Mercury is the <b>smallest</b> planet. It orbits the Sun.</p><p>Hi</p>"
                     "<ul><li>Closest to the Sun. </li><li>No moons</li></ul>",
    }
    wiki = LiveWiki.__new__(LiveWiki)
    monkeypatch.setattr(wiki, "_get", lambda entity: pages[entity], raising=False)
    hit = wiki.search("Beautiful")
    assert hit.page is None and hit.similar == ["Beautiful (Christina Aguilera song)", "Life Is Beautiful"]
    hit = wiki.search("Mercury")
    assert hit.page == "Mercury is the smallest planet. It orbits the Sun.\nClosest to the Sun. No moons\n"
    tools = WikiTools(wiki)
    assert tools.step("search[Beautiful]")[0] == ("Could not find Beautiful. Similar: "
                                                  "['Beautiful (Christina Aguilera song)', 'Life Is Beautiful'].")
    assert tools.step("search[Mercury]")[0] == "Mercury is the smallest planet. It orbits the Sun.. Closest to the Sun. No moons."
