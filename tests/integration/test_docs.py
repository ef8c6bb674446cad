"""The script examples in the documentation compile: every ```rhai block of
docs/scripting.md and of the README, every rustdoc example of the script API (engine/src/script/api.rs and api_auth.rs), and the
commented examples of the default scripts/00-default.rhai. Examples that do not compile teach
users errors.
"""

import re

import pytest

from conftest import REPO
from smtpclient import mailflow

DOC = REPO / "docs" / "scripting.md"
API = REPO / "engine" / "src" / "script" / "api.rs"
CATALOG = REPO / "engine" / "src" / "script" / "catalog.rs"
DEFAULT = REPO / "scripts" / "00-default.rhai"

FILE_HEADER = re.compile(r"^// scripts/(\S+?\.rhai)")


def markdown_blocks(text):
    return [m.group(1) for m in re.finditer(r"```rhai\n(.*?)```", text, re.S)]


def rustdoc_blocks(text):
    blocks, current = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "/// ```rhai":
            current = []
        elif stripped == "/// ```" and current is not None:
            blocks.append("\n".join(current) + "\n")
            current = None
        elif current is not None:
            current.append(stripped[4:] if stripped.startswith("/// ") else stripped[3:])
    return blocks


def files_of(block):
    """A block is one file, or several introduced by `// scripts/NAME.rhai` comment lines."""
    files, name, lines = {}, None, []
    for line in block.splitlines():
        m = FILE_HEADER.match(line)
        if m:
            if name or any(l.strip() for l in lines):
                files[name or "10-example.rhai"] = "\n".join(lines) + "\n"
            name, lines = m.group(1), []
        lines.append(line)
    files[name or "10-example.rhai"] = "\n".join(lines) + "\n"
    return files


def check_compiles(tmp_path, block):
    scripts = tmp_path / "scripts"
    for name, text in files_of(block).items():
        path = scripts / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    config = tmp_path / "mailflow.toml"
    plugins = sorted(set(re.findall(r"\b(kv|http|exec|rspamd|spamd)::", block)))
    config.write_text(
        '[smtp]\nlocal_domains = ["example.org"]\n'
        + (f"[plugins]\nenabled = {plugins!r}\n".replace("'", '"') if plugins else "")
    )
    r = mailflow("check", "--config", config)
    assert r.returncode == 0, f"example does not compile:\n{block}\n{r.stderr}"


DOC_BLOCKS = markdown_blocks(DOC.read_text()) if DOC.exists() else []
README_BLOCKS = markdown_blocks((REPO / "README.md").read_text())
API_BLOCKS = rustdoc_blocks(API.read_text()) if API.exists() else []
API_BLOCKS += rustdoc_blocks((API.parent / "api_auth.rs").read_text())


def test_there_are_examples():
    assert len(DOC_BLOCKS) >= 20
    assert len(API_BLOCKS) >= 40


@pytest.mark.parametrize("block", DOC_BLOCKS, ids=[f"doc{i}" for i in range(len(DOC_BLOCKS))])
def test_reference_examples_compile(tmp_path, block):
    check_compiles(tmp_path, block)


@pytest.mark.parametrize("block", README_BLOCKS, ids=[f"readme{i}" for i in range(len(README_BLOCKS))])
def test_readme_examples_compile(tmp_path, block):
    check_compiles(tmp_path, block)


def test_readme_quick_start_config_is_valid(tmp_path):
    """The quick start's `[[accounts]]` table (with the relay line) passes `mailflow check`."""
    text = (REPO / "README.md").read_text()
    (account,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    config = tmp_path / "mailflow.toml"
    config.write_text('[outbound]\nrelay = "smtps://user:pass@smtp.example.org:465"\n\n' + account)
    (tmp_path / "scripts").mkdir()
    r = mailflow("check", "--config", config)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("block", API_BLOCKS, ids=[f"api{i}" for i in range(len(API_BLOCKS))])
def test_api_doc_examples_compile(tmp_path, block):
    check_compiles(tmp_path, block)


def test_every_registered_function_has_a_doc_example():
    """The team rule: every script function in the API has a doc comment with an example."""
    text = API.read_text()
    # The catalog lists the API (entries naming an `api::` function); the rhai-only ones
    # register themselves in api.rs.
    registered = set(re.findall(r'e\(\w+(?:::\w+)?, [PM], "(\w+)", Imp::\w+\(api::(?!register_)(\w+)', CATALOG.read_text()))
    registered |= set(re.findall(r'engine\.register_(?:fn|get)\("(\w+)",\s*(\w+)\)', text))
    assert len(registered) >= 40
    for script_name, rust_fn in registered:
        m = re.search(r"((?:[ \t]*///[^\n]*\n)+)(?:pub(?:\([^)]*\))? )?fn " + rust_fn + r"\b", text)
        assert m, f"{script_name}: {rust_fn} has no doc comment"
        assert "```rhai" in m.group(1), f"{script_name}: {rust_fn}'s doc has no example"


def test_default_script_examples_compile(tmp_path):
    code = [l[3:] for l in DEFAULT.read_text().splitlines() if re.match(r"^// (fn |    |\})", l)]
    assert len(code) > 10
    check_compiles(tmp_path, "\n".join(code) + "\n")
