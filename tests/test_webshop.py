"""WebShop offline: oracle on every task, goal.py's reward on hand-derived cases, ReAct's client rules,
paging, the 6,400-char window, and the rendering checked against ReAct's own 1-shot prompt."""

from __future__ import annotations

import json
import random

import pytest

from slmkit.agents.webshop import load_environment
from slmkit.agents.webshop import pages
from slmkit.agents.webshop.catalog import load_catalog, prepare_product
from slmkit.agents.webshop.derive import build_derived_catalog
from slmkit.agents.webshop.policies import oracle_episode, random_episode
from slmkit.agents.webshop.react_format import load_prompt
from slmkit.agents.webshop.reward import get_reward, normalize_color, token_set_ratio


@pytest.fixture(scope="module")
def react_env():
    env, fmt = load_environment()
    yield env, fmt
    env.close()


@pytest.fixture(scope="module")
def text_env():
    env, fmt = load_environment(mode="text")
    yield env, fmt
    env.close()


# --- oracle / random --------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["react", "text"])
def test_oracle_reaches_reward_one_on_every_task(mode, react_env, text_env):
    env, _ = react_env if mode == "react" else text_env
    tasks = env.tasks()
    assert len(tasks) == 100 and [t.id for t in tasks] == [f"fixed_{i}" for i in range(100)]
    assert env.comparable is False and "derived catalog, not comparable" in env.mode
    for task in tasks:
        actions, history = oracle_episode(env, task)
        scores = env.score(task, history)
        assert history[-1].done and env.episode_info()["asin"] == task.data["goal"]["asin"], (task.id, actions)
        if mode == "text" and any("[" in o for o in task.data["goal"]["goal_options"]):
            # WebShop's text env parses actions with (.+)\[(.+)\]: an option value holding brackets
            # (fixed_88: '30 inseam (regular) [fits 5'5"-5'8"]') cannot be clicked there, only in ReAct's client
            assert scores["reward"] < 1, task.id
            continue
        assert scores == {"reward": 1.0, "score": 100.0, "success": 1.0}, (task.id, actions)


def test_random_policy_scores_far_below_oracle(react_env):
    env, _ = react_env
    rewards = [env.score(t, random_episode(env, t, seed=0)[1])["reward"] for t in env.tasks()]
    assert 0 < sum(rewards) / len(rewards) < 0.4


def test_buying_a_near_miss_loses_the_price_or_option_share(react_env):
    """The over-budget twin of task fixed_5 has the target's title, options and attributes: only r_price
    is lost, so its reward is (attributes + options) / (attributes + options + 1)."""
    env, _ = react_env
    task = env.tasks()[5]
    goal = task.data["goal"]
    roles = env.catalog.manifest["roles"]
    twin = next(a for a, (role, origin) in roles.items() if role == "near miss: over budget" and origin == task.id)
    env.reset(task)
    env.step(f"search[{env.catalog.by_asin[twin]['Title']}]")
    assert twin in env.page_asins
    env.step(f"click[{twin}]")
    for option in goal["goal_options"]:
        assert env.step(f"click[{option}]").observation == f"You have clicked {option}."
    result = env.step("click[Buy Now]")
    n = len(goal["attributes"]) + len(goal["goal_options"])
    assert result.done and result.reward == pytest.approx(n / (n + 1))
    assert result.observation == f"Your score (min 0.0, max 1.0): {result.reward}"


# --- the reward, against goal.py read by hand ---------------------------------------------------------

def _product(**kw):
    base = {"name": "Plain Thing", "Title": "Plain Thing", "BulletPoints": [""], "Description": "",
            "Attributes": ["plain"], "query": "things", "product_category": ""}
    base.update(kw)
    if "name" in kw and "Title" not in kw:
        base["Title"] = kw["name"]
    return base


def _goal(**kw):
    base = {"name": "Goal Thing", "query": "things", "product_category": "", "attributes": ["plain"],
            "goal_options": [], "price_upper": 20.0}
    base.update(kw)
    return base


NOUNS = {  # a fixed noun table, so the cases below test goal.py's arithmetic, not a tagger
    "Goal Thing": ["thing"], "Plain Thing": ["thing"], "Other": ["widget"],
    "Shoe Sole": ["shoe", "sole"], "Shoe": ["shoe"], "Five Nouns": ["shoe", "sole", "heel", "size", "color"],
    "Twelve Nouns": [f"n{i}" for i in range(11)] + ["shoe"], "No Nouns": [], "Hair Twice": ["hair", "extension", "hair"],
    "Hair": ["hair"],
}

# (case, product, goal, price, options, expected reward) — expected values worked out from goal.py by hand
REWARD_CASES = [
    ("all met", _product(Attributes=["natural looking"]), _goal(attributes=["natural looking"]), 10.0, {}, 1.0),
    ("over budget: r_price False", _product(Attributes=["natural looking"]), _goal(attributes=["natural looking"]),
     25.0, {}, 0.5),
    ("price equal to the bound counts", _product(Attributes=["natural looking"]),
     _goal(attributes=["natural looking"]), 20.0, {}, 1.0),
    ("attribute found in the lower-cased title", _product(Title="Natural Looking Wig"),
     _goal(name="Goal Thing", attributes=["natural looking"]), 5.0, {}, 1.0),
    ("attribute found in a bullet", _product(BulletPoints=["so EASY to CLEAN"]), _goal(attributes=["easy to clean"]),
     5.0, {}, 1.0),
    ("token subset is a full token_set_ratio match", _product(Attributes=["easy clean"]),
     _goal(attributes=["easy to clean"]), 5.0, {}, 1.0),
    ("gluten free vs sugar free scores 57: no match", _product(Attributes=["sugar free"]),
     _goal(attributes=["gluten free"]), 5.0, {}, 0.5),
    ("navy blue and dark blue both normalise to blue", _product(), _goal(goal_options=["navy blue"]), 5.0,
     {"color": "dark blue"}, 1.0),
    ("light grey -> grey matches grey", _product(), _goal(goal_options=["grey"]), 5.0, {"color": "light grey"}, 1.0),
    ("black is not blue", _product(), _goal(goal_options=["blue"]), 5.0, {"color": "black"}, 2 / 3),
    ("one option hit of two, one attribute of two", _product(Attributes=["gluten free"]),
     _goal(attributes=["gluten free", "dairy free"], goal_options=["x-large", "red"]), 5.0,
     {"size": "x-large", "color": "blue"}, (1 + 1 + 1) / 5),
    ("r_type 0.5: 1/5 of goal nouns, other query", _product(name="Shoe", query="other"),
     _goal(name="Five Nouns", attributes=["plain"]), 5.0, {}, 0.5 * (1 + 0 + 1) / 2),
    ("r_type 1.0: 1/2 of goal nouns > 0.2", _product(name="Shoe", query="other"), _goal(name="Shoe Sole"), 5.0, {},
     1.0),
    ("r_type 0.1: 1/12 of goal nouns, even with the query matching", _product(name="Shoe"),
     _goal(name="Twelve Nouns"), 5.0, {}, 0.1),
    ("r_type 0.0: no shared noun beats a query match", _product(name="Other"), _goal(name="Goal Thing"), 5.0, {},
     0.0),
    ("no goal nouns: title_score 0.2, other query -> 0.5", _product(name="Shoe", query="other"),
     _goal(name="No Nouns"), 5.0, {}, 0.5),
    ("no goal nouns, two shared category levels -> 1.0", _product(name="Shoe", query="other",
                                                                  product_category="A › B › C"),
     _goal(name="No Nouns", product_category="A › B › D"), 5.0, {}, 1.0),
    ("one shared category level is not enough", _product(name="Shoe", query="other", product_category="A › X"),
     _goal(name="No Nouns", product_category="A › B"), 5.0, {}, 0.5),
    ("duplicate goal nouns divide: {hair} / 3 = 0.33 > 0.2", _product(name="Hair", query="other"),
     _goal(name="Hair Twice"), 5.0, {}, 1.0),
]


@pytest.mark.parametrize("case,product,goal,price,options,expected", REWARD_CASES, ids=[c[0] for c in REWARD_CASES])
def test_reward_matches_goal_py_by_hand(case, product, goal, price, options, expected):
    reward, _ = get_reward(product, goal, price=price, options=options, nouns=lambda name: list(NOUNS[name]))
    assert reward == pytest.approx(expected)


def test_token_set_ratio_is_thefuzz(react_env):
    """Against the stock library goal.py imports, on the catalog's attribute/option strings and odd text."""
    from thefuzz import fuzz

    env, _ = react_env
    strings = sorted({a for p in env.catalog.products for a in p["Attributes"]}
                     | {o for p in env.catalog.products for v in p["options"].values() for o in v})
    strings += ["dual 12” with amplifier", "café crème", "under_score", "  ", "", "3.5 OZ", "a-8", "no.21"]
    rng = random.Random(0)
    pairs = [(rng.choice(strings), rng.choice(strings)) for _ in range(3000)] + [(s, s + " x") for s in strings[:200]]
    assert [token_set_ratio(a, b) for a, b in pairs] == [fuzz.token_set_ratio(a, b) for a, b in pairs]


def test_normalize_color_takes_the_first_listed_color():
    assert normalize_color("rose gold") == "gold"  # 'gold' comes before 'rose' in COLOR_SET
    assert normalize_color("navy blue") == "blue"
    assert normalize_color("xx-large") == "xx-large"


def test_noun_tagger_tags_plain_nouns(react_env):
    env, _ = react_env
    assert env.nouns("the dog chased a cat") == ["dog", "cat"]


# --- ReAct's client: invalid actions, clicks on nothing ------------------------------------------------

def test_invalid_actions_leave_the_episode_running(react_env):
    env, _ = react_env
    task = env.tasks()[0]
    env.reset(task)
    for bad in ["foo", "", "Search[hair]", "click[Buy Now]", "click[Back to Search]", "click[< Prev]"]:
        r = env.step(bad)
        assert (r.observation, r.done, r.reward, r.info["invalid"]) == ("Invalid action!", False, 0.0, True), bad
    assert env.step("think[plan]").observation == "OK."
    assert "Page 1 (Total results: 50)" in env.step("search[hair extension]").observation
    for bad in ["search[again]", "click[B000000000]", "click[Buy Now]", "click[Next >]", "click[< Prev]",
                "click[Description]", "click[nothing at all]"]:
        r = env.step(bad)
        assert (r.observation, r.done, r.info.get("invalid")) == ("Invalid action!", False, True), bad
    env.step(f"click[{env.page_asins[0]}]")
    assert env.page.page_type == "item"
    assert env.step("click[not an option]").observation == "Invalid action!"
    r = env.step("click[Buy Now]")
    assert r.done and r.observation.startswith("Your score (min 0.0, max 1.0): ")


def test_react_client_shows_three_products_but_all_ten_are_clickable(react_env):
    env, _ = react_env
    env.reset(env.tasks()[1])
    obs = env.step("search[usb microphone noise cancelling]").observation
    asins = env.page_asins
    assert len(asins) == 10
    assert [a for a in asins if f"[{a}]" in obs] == asins[:3]
    r = env.step(f"click[{asins[7]}]")
    assert not r.info.get("invalid") and env.page.page_type == "item"
    r = env.step("click[Features]")
    assert env.page.page_type == "item_sub" and r.observation.startswith("\n[Back to Search] \n[< Prev] ")
    assert env.step("click[Description]").observation == "Invalid action!"  # sub pages only from the item
    assert env.step("click[whatever]").info.get("noop")  # any other click: ReAct's client re-renders the page
    env.step("click[< Prev]")
    assert env.page.page_type == "item"
    env.step("click[< Prev]")
    assert env.page.page_type == "search" and env.page_asins == asins
    env.step("click[Back to Search]")
    assert env.page.page_type == "init"


def test_text_env_invalid_click_keeps_the_page(text_env):
    env, _ = text_env
    first = env.reset(env.tasks()[0])
    assert first.startswith("WebShop [SEP] Instruction: [SEP] i need a long clip-in hair extension")
    r = env.step("click[buy now]")
    assert (r.observation, r.done, r.info["invalid"]) == (first, False, True)


# --- paging and Back to Search (WebShop's text env) ----------------------------------------------------

def test_pages_of_ten_next_prev_and_back_to_search(text_env):
    env, _ = text_env
    env.reset(env.tasks()[3])
    query = "gluten free smoked bacon"
    hits = env.search_engine.search(query)
    assert len(hits) == 50
    page1 = env.step(f"search[{query}]").observation
    assert "Page 1 (Total results: 50) [SEP] Next > [SEP]" in page1 and "< Prev" not in page1
    assert env.page_asins == hits[:10]
    page2 = env.step("click[next >]").observation
    assert "Page 2 (Total results: 50) [SEP] < Prev [SEP] Next >" in page2 and env.page_asins == hits[10:20]
    for _ in range(3):
        env.step("click[next >]")
    assert env.page_asins == hits[40:50]
    assert env.step("click[next >]").observation.endswith("Page 6 (Total results: 50) [SEP] < Prev [SEP] Next >")
    assert env.page_asins == []
    for _ in range(5):
        env.step("click[< prev]")
    assert env.page_asins == hits[:10]
    env.step(f"click[{hits[2].lower()}]")
    assert env.page.page_type == "item"
    env.step("click[< prev]")
    assert env.page_asins == hits[:10]
    start = env.step("click[back to search]").observation
    assert start.startswith("WebShop [SEP] Instruction: [SEP]") and start.endswith("[SEP] Search")


# --- the 6,400-character window -----------------------------------------------------------------------

def _notebook_calls(env, task, outputs: list[str]) -> list[str]:
    """The text of every model call WebShop.ipynb's `webshop_run` makes for these model outputs (its string
    construction re-implemented line by line; its 15th call, whose action is never run, left out)."""
    init_prompt, prompt, action, calls = load_prompt(), "", "reset", []
    for i in range(15):
        if i == 0:
            observation, done = env.reset(task), False
        else:
            res = env.step(action)
            observation, done = res.observation, res.done
        if action.startswith("think"):
            observation = "OK."
        prompt += f" {action}\nObservation: {observation}\n\nAction:" if i else f"{observation}\n\nAction:"
        if done or i == 14:
            return calls
        calls.append(init_prompt + prompt[-(6400 - len(init_prompt)):])
        action = outputs[i].lstrip(" ")
    return calls


def test_the_loop_sends_reacts_6400_char_window(react_env, tiny_tokenizer_dir):
    """Every model call of a real loop episode is the notebook's `init_prompt + prompt[-(6400-len(init_prompt)):]`:
    the 1-shot prompt whole, the start page inside the window (it scrolls away like everything else)."""
    from agentkit import ScriptedLLM

    from slmkit.agents.react import Sampling, run_episodes
    from slmkit.model.tokenizer import load_tokenizer

    env, fmt = react_env
    task = env.tasks()[2]
    outputs = [" search[hair treatment 60 capsules]"] + [f" think[{'x' * 600} {i}]" for i in range(2, 15)]
    seen: list[str] = []

    def policy(key, step, followup, prompt):
        seen.append(prompt)
        return outputs[len(seen) - 1]

    [record] = run_episodes(env, fmt, [task], ScriptedLLM(load_tokenizer(tiny_tokenizer_dir), policy),
                            Sampling(max_new_tokens=4000), parallel=1)
    first_page = record["first_observation"]
    reference = _notebook_calls(env.spawn(), task, outputs)
    assert len(seen) == len(reference) == 14 and seen == reference
    assert len(seen[-1]) == 6400 and not seen[-1].startswith(load_prompt() + first_page)  # the start page scrolled away
    assert seen[0] == load_prompt() + first_page + "\n\nAction:"
    assert [p["kind"] for p in record["pieces"][:3]] == ["prompt", "observation", "turn"]


def test_format_parses_like_react():
    from slmkit.agents.webshop.react_format import WebShopReactFormat

    fmt = WebShopReactFormat("FEWSHOT")
    assert fmt.max_steps == 14 and fmt.stops(1) == ("\n",) and fmt.turn(3) == "\n\nAction:"
    move = fmt.parse(1, "  search[red shoes]")
    assert (move.action, move.text, move.malformed) == ("search[red shoes]", " search[red shoes]", None)
    assert fmt.parse(2, "buy it").malformed and fmt.parse(2, "").malformed
    assert fmt.parse(2, "click[Buy Now").malformed == "unbalanced brackets"
    assert fmt.observation(2, "OK.") == "\nObservation: OK."


# --- rendering, against ReAct's own prompt ------------------------------------------------------------

def test_rendering_reproduces_react_prompt_observations():
    """prompt1 was recorded from ReAct's client on the real shop: our pages, fed the same product facts,
    give the same observation text (the prompt's authors added one trailing space before each blank line)."""
    prompt = load_prompt()
    observations = [part.split("\n\nAction:")[0] for part in prompt.split("Observation: ")[1:]]
    instruction = ("i would like a 3 ounce bottle of bright citrus deodorant for sensitive skin, "
                   "and price lower than 50.00 dollars")
    results = [("B078GWRC1J", "Bright Citrus Deodorant by Earth Mama | Natural and Safe for Sensitive Skin, "
                "Pregnancy and Breastfeeding, Contains Organic Calendula 3-Ounce", "$10.99"),
               ("B078GTKVXY", "Ginger Fresh Deodorant by Earth Mama | Natural and Safe for Sensitive Skin, "
                "Pregnancy and Breastfeeding, Contains Organic Calendula 3-Ounce", "$10.99"),
               ("B08KBVJ4XN", "Barrel and Oak - Aluminum-Free Deodorant, Deodorant for Men, Essential Oil-Based "
                "Scent, 24-Hour Odor Protection, Cedar & Patchouli Blend, Gentle on Sensitive Skin (Mountain "
                "Sage, 2.7 oz, 2-Pack)", "$15.95")]
    products = [{"asin": a, "Title": t, "Price": p} for a, t, p in results]
    rendered, info = pages.render_react(pages.results_page(instruction, products, 1, 50))
    assert rendered == observations[0].rstrip(" ") + " " and info["asins"] == [a for a, _, _ in results]
    raw = {"asin": "B078GWRC1J", "name": results[0][1], "full_description": "", "small_description": [""],
           "pricing": "$10.99", "query": "deodorant", "customization_options": {
               "scent": [{"value": v} for v in ["assorted scents", "bright citrus", "calming lavender",
                                                "ginger fresh", "simply non-scents"]],
               "size": [{"value": v} for v in ["travel set (4-pack)", "3 ounce (pack of 1)", "3-ounce (2-pack)"]]}}
    item = prepare_product(raw, {})
    rendered, info = pages.render_react(pages.item_page(instruction, item, show_attrs=False, url="/item_page/x/{}"))
    assert rendered == observations[2].rstrip(" ") + " "
    assert info["option_types"]["bright citrus"] == "scent" and info["option_types"]["3-ounce (2-pack)"] == "size"
    start, _ = pages.render_react(pages.start_page(instruction))
    assert start == f"\nWebShop \nInstruction:  \n{instruction} \n[Search] "
    assert prompt.startswith("Webshop \nInstruction:  \n" + instruction + " \n[Search]")


# --- the derived catalog ------------------------------------------------------------------------------

def test_derived_catalog_is_deterministic_standard_files(tmp_path, data_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    ma = build_derived_catalog(data_dir / "webshop", a)
    build_derived_catalog(data_dir / "webshop", b)
    for name in ("items_shuffle_1000.json", "items_ins_v2_1000.json", "items_human_ins.json", "DERIVED.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert ma["products"] == 1000 and ma["counts"]["target"] == 100 and ma["comparable"] is False
    raw = json.loads((a / "items_shuffle_1000.json").read_text())
    assert {"asin", "name", "full_description", "small_description", "pricing", "customization_options",
            "product_category", "query"} <= set(raw[0])
    shop = load_catalog(a)
    expel = json.loads((data_dir / "webshop" / "expel_webshop_fixed100.json").read_text())
    for rec in expel:  # every target: real asin and name, goal options offered, price under the bound
        product = shop.by_asin[rec["key"]["asin"]]
        assert product["name"] == rec["key"]["name"]
        offered = {v for values in product["options"].values() for v in values}
        assert set(rec["key"]["goal_options"]) <= offered
        if "price lower than" in rec["task"]:
            bound = float(rec["task"].split("price lower than ")[1].split(" ")[0])
            assert shop.prices[product["asin"]] <= bound


def test_catalog_folder_is_what_users_point_at(tmp_path, data_dir):
    """--catalog DIR: a folder of standard files (here the derived one copied there) loads the same tasks."""
    build_derived_catalog(data_dir / "webshop", tmp_path)
    env, _ = load_environment(catalog=tmp_path, limit=3)
    assert [t.id for t in env.tasks()] == ["fixed_0", "fixed_1", "fixed_2"]
    actions, history = oracle_episode(env, env.tasks()[2])
    assert history[-1].reward == 1.0


# --- runs through `slmkit agent run` ------------------------------------------------------------------

def test_killed_run_resumes_to_the_uninterrupted_results(tiny_tokenizer_dir, tmp_path, one_thread):
    from agentkit import results_without_timing, run_killed_then_resumed, saved_episodes, tiny_checkpoint

    from slmkit.agents.react import Sampling
    from slmkit.agents.runner import run_agent

    model = tiny_checkpoint(tiny_tokenizer_dir, tmp_path / "ck")
    kw = dict(limit=3, sampling=Sampling(max_new_tokens=8), parallel=3)
    whole = run_agent("webshop", model, tmp_path / "whole", progress=False, **kw)
    again = run_killed_then_resumed("webshop", model, tmp_path / "killed", kill_after=2, **kw)
    assert again["timing"]["sessions"][-1]["episodes"] == 1
    assert results_without_timing(again) == results_without_timing(whole)
    episodes = saved_episodes(tmp_path / "whole")
    assert saved_episodes(tmp_path / "killed") == episodes
    assert [e["task_id"] for e in episodes] == ["fixed_0", "fixed_1", "fixed_2"]
    assert all(e["n_steps"] == 14 and not e.get("error") for e in episodes)  # a random model never buys
    assert whole["stats"]["invalid_actions"] > 0 and set(whole["scores"]) == {"reward", "score", "success"}
    # every result says what it is not
    assert not whole["comparable"] and whole["not_comparable_because"].startswith("derived catalog, not comparable")
    assert whole["mode"].startswith("derived catalog, not comparable") and whole["details"]["derived"] is True
    assert "Not comparable" in (tmp_path / "whole" / "report.md").read_text()
