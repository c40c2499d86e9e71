"""The Mutopia crawler against a local imitation of the site (tests/mutopia_site.py).

Every test asserts on what the server saw: order, gaps, headers, and what was never asked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import corpus.reasons
from corpus.lake import Lake
from corpus.sources import mutopia as M
from tests.mutopia_site import MutopiaSite

DELAY = 0.05
IDS = [37, 276, 411, 590, 921, 931, 980, 981, 1136, 1826, 2021, 2247]  # 12 pieces: 2 listing pages


@pytest.fixture(autouse=True)
def new_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    for code, text in M.NEW_REASONS.items():
        if code not in corpus.reasons.REASONS:
            monkeypatch.setitem(corpus.reasons.REASONS, code, text)


@pytest.fixture
def site(data_dir: Path):
    with MutopiaSite(data_dir, ids=IDS) as s:
        yield s


def crawler(lake: Lake, site: MutopiaSite, **kw) -> M.MutopiaCrawler:
    opts = {"delay": DELAY, "backoff": 0.01, "timeout": 5.0}
    opts.update(kw)
    return M.MutopiaCrawler(lake, base_url=site.url, **opts)


def ftp(paths: list[str]) -> list[str]:
    return [p for p in paths if p.startswith("/ftp/")]


# ------------------------------------------------------------------ pure parsing
@pytest.mark.parametrize(
    ("text", "spdx"),
    [
        ("Public Domain", "PD"),
        ("Creative Commons Attribution-ShareAlike 3.0", "CC-BY-SA-3.0"),
        ("Creative Commons Attribution-ShareAlike 3.0 (Unported)", "CC-BY-SA-3.0"),
        ("Creative Commons Attribution-ShareAlike 4.0 International", "CC-BY-SA-4.0"),
        ("Creative Commons BY-SA 2.5", "CC-BY-SA-2.5"),
        ("Creative Commons Attribution-ShareAlike 2.0", "CC-BY-SA-2.0"),
        ("Creative Commons Attribution 2.5", "CC-BY-2.5"),
        ("Creative Commons Attribution 4.0", "CC-BY-4.0"),
        ("Creative Commons Attribution-ShareAlike", "CC-BY-SA-2.5"),
        ("", None),
        ("null", None),
        ("All rights reserved", None),
    ],
)
def test_normalize_license(text: str, spdx: str | None) -> None:
    assert M.normalize_license(text) == spdx


def test_parse_rdf_both_serialisations_and_quirks(data_dir: Path) -> None:
    real = data_dir / "mutopia-site" / "rdf" / "real"
    elise = M.parse_rdf((real / "BeethovenLv__WoO59__fur_Elise_WoO59.rdf").read_bytes())
    assert elise["source"] == "Breitkopf & Härtel, 1888"  # double-escaped in the file
    assert elise["title"] == "Für Elise" and elise["lyricist"] == "" and elise["id"] == "Mutopia-2015/08/18-931"
    for rdf in sorted(real.glob("*.rdf")):  # Java-era and mupub layouts
        fields = M.parse_rdf(rdf.read_bytes())
        assert M.mutopia_number(fields["id"]).isdigit(), rdf.name
        assert fields["title"] and fields["composer"] == rdf.name.split("__")[0], rdf.name
        assert fields.get("midFile") or "variant" in rdf.name  # the variant has no asset fields
    synthetic = M.parse_rdf((data_dir / "mutopia-site" / "rdf" / "synthetic_test" / "testInput.rdf").read_bytes())
    assert synthetic["licence"] == "" and M.mutopia_number(synthetic["id"]) == ""
    with pytest.raises(ValueError):
        M.parse_rdf(b"<html>not rdf</html>")


def test_not_found_page_and_listing(site: MutopiaSite) -> None:
    page = M.parse_listing(site.piece_info({"id": ["2"]}), site.url + "/cgibin/piece-info.cgi?id=2")
    assert page.rows == [] and page.not_found
    page = M.parse_listing(site.make_table({"startat": ["0"]}), site.url + "/cgibin/make-table.cgi?startat=0")
    assert [r.id for r in page.rows] == [str(i) for i in IDS[:10]]
    assert page.next_url is not None and "startat=10" in page.next_url
    assert page.offsite_links == 20  # creativecommons.org + elsewhere.example.org per row: ignored
    moon = page.rows[1]
    assert moon.mid_url.endswith("/ftp/BeethovenLv/O27/moonlight/moonlight-mids.zip")
    assert moon.folder_url.endswith("/ftp/BeethovenLv/O27/moonlight/") and moon.composer_name == "L. V. Beethoven"


# ------------------------------------------------------------------ the crawl
def test_full_crawl_order_politeness_and_items(lake: Lake, site: MutopiaSite) -> None:
    site.truncated_zips.add("moonlight-mids.zip")
    site.missing_files.update({"Chop-28-1.mid", "sor_op2_nr5.rdf"})  # a 404 MIDI; a folder without RDF
    c = crawler(lake, site)
    items = list(c)
    paths = site.paths()
    assert paths[0] == "/robots.txt" and paths[1] == "/cgibin/make-table.cgi?startat=0"
    assert paths[2:4] == ["/ftp/SatieE/gymnopedie_1/gymnopedie_1.rdf", "/ftp/SatieE/gymnopedie_1/gymnopedie_1.mid"]
    assert sum("make-table.cgi" in p for p in paths) == 2 and len(paths) == len(set(paths)) == 1 + 2 + 2 * len(IDS)
    assert not any("example.org" in p or "creativecommons" in p for p in paths)
    gaps = [b.t - a.t for a, b in zip(site.requests, site.requests[1:])]
    assert min(gaps) >= DELAY * 0.7 and sum(gaps) / len(gaps) >= DELAY  # server-side times jitter a little
    assert all(r.headers["user-agent"] == M.DEFAULT_USER_AGENT for r in site.requests)
    assert c.stopped_because.startswith("done") and c.pieces == len(IDS) and c.requests == len(paths)

    by_uri = {it.uri.removeprefix(site.url): it for it in items}
    assert by_uri["/ftp/BeethovenLv/O27/moonlight/moonlight-mids.zip"].reject[0] == "archive_corrupt"
    assert by_uri["/ftp/ChopinFF/O28/Chop-28-1/Chop-28-1.mid"].reject[0] == "http_not_found"
    assert by_uri["/ftp/ChopinFF/O28/Chop-28-1/Chop-28-1.mid"].data is None
    sor = by_uri["/ftp/SorF/O2/sor_op2_nr5/sor_op2_nr5.mid"]  # no RDF: metadata from the listing
    assert (
        sor.data
        and sor.meta["mutopia_id"] == "590"
        and sor.meta["composer"] == "SorF"
        and sor.license == "CC-BY-SA-2.5"
    )
    members = [it for it in items if it.meta["mutopia_id"] == "1826"]
    assert [it.name for it in members] == ["piano-mov1.mid", "piano-mov2.mid", "piano-mov3.mid"]
    assert all(it.meta["zip_url"] == site.url + "/ftp/BachJS/BWV971/piano/piano-mids.zip" for it in members)
    assert [it.meta["movement"] for it in members] == ["piano-mov1", "piano-mov2", "piano-mov3"]
    assert members[0].uri == members[0].meta["zip_url"] + "!piano-mov1.mid" and members[0].license == "CC-BY-SA-3.0"
    goldberg = by_uri["/ftp/BachJS/BWV988/bwv-988-v01/bwv-988-v01.mid"]
    assert goldberg.data == (site.mirror / "ftp/BachJS/BWV988/bwv-988-v01/bwv-988-v01.mid").read_bytes()
    assert goldberg.meta["title"] == "Goldberg Variations - 1" and goldberg.meta["composer_name"] == "J. S. Bach"
    assert goldberg.meta["movement"] is None and goldberg.meta["zip_url"] is None
    assert by_uri["/ftp/SatieE/Trois_Valses/Sa_Taille/Sa_Taille.mid"].license == "CC-BY-SA-4.0"
    assert by_uri["/ftp/SatieE/Trois_Valses/Sa_Taille/Sa_Taille.mid"].meta["license_text"].endswith("4.0 International")
    for it in items:
        assert set(it.meta) == set(M.META_KEYS) and it.source == "mutopia"
        assert all(isinstance(it.meta[k], str) for k in M.META_KEYS if k not in ("movement", "zip_url"))
    state = json.loads((lake.root / "crawl" / "mutopia" / "state.json").read_text())
    assert state["crawl"]["status"] == "done" and state["max_id"] == max(IDS)


def test_second_crawl_is_conditional_and_mostly_304(lake: Lake, site: MutopiaSite) -> None:
    first = list(crawler(lake, site))
    site.clear()
    site.changed.add("bwv-988-v01.mid")
    c = crawler(lake, site)
    second = list(c)
    seen = ftp(site.paths())
    conditional = [r for r in site.requests if r.path.startswith("/ftp/")]
    assert all("if-none-match" in r.headers and "if-modified-since" in r.headers for r in conditional)
    assert c.not_modified == len(seen) - 1  # all but the changed file
    assert site.paths()[0] == "/robots.txt"
    assert {it.uri for it in second} == {it.uri for it in first}
    changed = [it for it in second if it.uri.endswith("bwv-988-v01.mid")]
    assert changed[0].data and changed[0].data.endswith(b"\x00")


def test_resume_after_max_pieces_fetches_nothing_twice(lake: Lake, site: MutopiaSite) -> None:
    c1 = crawler(lake, site, max_pieces=5)
    part1 = list(c1)
    assert c1.pieces == 5 and "max_pieces" in c1.stopped_because
    c2 = crawler(lake, site)
    part2 = list(c2)
    assert c2.stats.resumed and c2.stopped_because.startswith("done")
    paths = [p for p in site.paths() if p != "/robots.txt"]
    assert len(paths) == len(set(paths)) == 2 + 2 * len(IDS)  # nothing fetched twice
    assert {it.meta["mutopia_id"] for it in part1 + part2} == {str(i) for i in IDS}


def test_interrupted_mid_zip_resumes_from_the_raw_store(lake: Lake, site: MutopiaSite) -> None:
    it = iter(crawler(lake, site))
    got = []
    for item in it:
        got.append(item)
        if item.name == "chop-28-4a-mov2.mid":
            break
    it.close()  # the consumer dies in the middle of a zip's members
    n_before = len(site.requests)
    rest = list(crawler(lake, site))
    paths = [p for p in site.paths() if p != "/robots.txt"]
    assert len(paths) == len(set(paths))
    assert "/ftp/ChopinFF/O28/Chop-28-4a/Chop-28-4a-mids.zip" not in [r.path for r in site.requests[n_before:]]
    assert [i.name for i in rest[:3]] == ["chop-28-4a-mov1.mid", "chop-28-4a-mov2.mid", "chop-28-4a-mov3.mid"]
    assert rest[0].data == got[-2].data


def test_retry_after_503(lake: Lake, site: MutopiaSite) -> None:
    site.fail_next, site.retry_after = 1, "1"
    c = crawler(lake, site, max_pieces=1)
    items = list(c)
    assert items and items[0].data
    r = site.requests
    assert r[1].path == r[2].path == "/cgibin/make-table.cgi?startat=0"  # the 503, then the retry
    assert r[2].t - r[1].t >= 0.95 and c.stats.retries == 1


def test_retry_after_too_long_stops(lake: Lake, site: MutopiaSite) -> None:
    site.fail_next, site.retry_after = 1, "3600"
    c = crawler(lake, site, max_backoff=5)
    assert list(c) == [] and "retry after 3600" in c.stopped_because and len(site.requests) == 2


def test_circuit_breaker(lake: Lake, site: MutopiaSite) -> None:
    site.fail_prefix, site.retry_after = "/ftp/", None
    c = crawler(lake, site, breaker=4, max_retries=1)
    items = list(c)
    assert "circuit breaker: 4 consecutive" in c.stopped_because
    assert len(ftp(site.paths())) == 4 and items == []


def test_slow_responses_time_out_and_trip_the_breaker(lake: Lake, site: MutopiaSite) -> None:
    site.slow, site.slow_prefix = 0.6, "/ftp/"
    c = crawler(lake, site, timeout=0.2, max_retries=1, breaker=3)
    assert list(c) == []
    assert "circuit breaker: 3 consecutive" in c.stopped_because and "timed out" in c.stopped_because
    assert len(ftp(site.paths())) == 3


def test_robots_5xx_crawls_nothing(lake: Lake, site: MutopiaSite) -> None:
    site.robots_status = 503
    c = crawler(lake, site)
    assert list(c) == [] and site.paths() == ["/robots.txt"]
    assert "robots.txt unavailable" in c.stopped_because


def test_robots_404_allows_everything(lake: Lake, site: MutopiaSite) -> None:
    site.robots_status = 404
    c = crawler(lake, site, max_pieces=2)
    assert len(list(c)) >= 2 and site.paths()[1].startswith("/cgibin/make-table.cgi")


def test_restrictive_robots_is_obeyed(lake: Lake, site: MutopiaSite) -> None:
    site.robots = "User-agent: *\nDisallow: /cgibin/\n"
    c = crawler(lake, site)
    assert list(c) == [] and site.paths() == ["/robots.txt"] and "disallows the listing" in c.stopped_because


def test_robots_for_our_agent_and_crawl_delay(lake: Lake, site: MutopiaSite) -> None:
    site.robots = "User-agent: midicorpus\nDisallow: /ftp/BachJS/\nCrawl-delay: 0.15\n\nUser-agent: *\nDisallow: /\n"
    c = crawler(lake, site, max_pieces=9)
    starts: list[float] = []
    orig = c._wait_turn

    def spy() -> None:
        orig()
        starts.append(c._last_start)

    c._wait_turn = spy  # type: ignore[method-assign]
    items = list(c)
    assert c.delay == 0.15
    assert not any(p.startswith("/ftp/BachJS/") for p in site.paths())
    bach = [it for it in items if "/ftp/BachJS/" in it.uri]
    assert bach and all(it.reject and it.reject[0] == "robots_disallowed" for it in bach)
    # every request starts Crawl-delay after the one before; the site sees that on average (one
    # arrival can be late on a loaded machine, which shortens the next gap it measures, not the mean)
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 0.15
    gaps = [b.t - a.t for a, b in zip(site.requests, site.requests[1:])]
    assert len(gaps) >= 5 and sum(gaps) / len(gaps) >= 0.14


def test_client_side_start_to_start_gaps(lake: Lake, site: MutopiaSite) -> None:
    starts: list[float] = []
    c = crawler(lake, site, delay=0.03, max_pieces=3)
    orig = c._wait_turn

    def spy() -> None:
        orig()
        starts.append(c._last_start)

    c._wait_turn = spy  # type: ignore[method-assign]
    list(c)
    assert len(starts) == c.requests and min(b - a for a, b in zip(starts, starts[1:])) >= 0.03


def test_crawl_delay_never_lowers(lake: Lake, site: MutopiaSite) -> None:
    site.robots = "User-agent: *\nCrawl-delay: 0.01\n"
    c = crawler(lake, site, delay=0.08, max_pieces=1)
    list(c)
    assert c.delay == 0.08


def test_new_mode_reads_rss_and_fetches_only_new_ids(data_dir: Path, lake: Lake) -> None:
    with MutopiaSite(data_dir, ids=[37, 921, 2021]) as site:
        list(crawler(lake, site))
        site.add_piece(2248)
        site.clear()
        c = crawler(lake, site, mode="new")
        items = list(c)
        assert site.paths() == [
            "/robots.txt",
            "/latestadditions.rss",
            "/cgibin/piece-info.cgi?id=2248",
            "/ftp/Rimsky-KorsakovN/PesnyaVaryazhskogoGostya/PesnyaVaryazhskogoGostya.rdf",
            "/ftp/Rimsky-KorsakovN/PesnyaVaryazhskogoGostya/PesnyaVaryazhskogoGostya-mids.zip",
        ]
        assert {it.meta["mutopia_id"] for it in items} == {"2248"} and len(items) == 3


def test_ingest_crawl_into_lake(lake: Lake, site: MutopiaSite) -> None:
    from corpus.engine import Engine

    site.missing_files.add("Chop-28-1.mid")
    with lake.lock("test"), Engine(workers=0) as engine:
        summary, stats = M.crawl(lake, engine, base_url=site.url, delay=DELAY, backoff=0.01)
        assert summary.inputs == stats.items == 22 and summary.rejected >= 1
        rows = lake.query(
            "SELECT source_uri, status, reason, license, mutopia_id, composer, movement, zip_url FROM pieces WHERE source = 'mutopia'"
        ).to_pylist()
        summary2, stats2 = M.crawl(lake, engine, base_url=site.url, delay=DELAY, backoff=0.01)
    assert len(rows) == 22
    chop = next(r for r in rows if r["source_uri"].endswith("Chop-28-1.mid"))
    assert chop["status"] == "rejected" and chop["reason"] == "http_not_found"
    zips = [r for r in rows if r["zip_url"]]
    assert len(zips) == 15 and all(r["movement"] for r in zips)
    assert {r["license"] for r in rows} >= {"PD", "CC-BY-SA-3.0", "CC-BY-3.0"}
    assert stats2.not_modified >= 20 and summary2.unchanged == summary2.inputs == 22
