"""The client verbs of `fluxhook`: they talk to a running fluxhook over its HTTP API.

Exit codes: 0 success; 1 the job ended without an image (failed or moderated); 2 bad usage
or configuration; 3 fluxhook refused the request or could not be reached.
"""

import argparse
import difflib
import json
import os
import sys
from pathlib import Path

import httpx

from service import catalog
from service.jobs import EVENT_TYPES

TERMINAL_EVENTS = {"job.ready", "job.failed", "job.moderated"}
EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp"}


class ClientError(Exception):
    """Bad usage or configuration (exit 2)."""


class RequestFailed(Exception):
    """fluxhook refused the request or could not be reached (exit 3)."""


def add_client_verbs(verbs) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="fluxhook's base URL (default: $FLUXHOOK_URL)")
    common.add_argument("--key", help="API key (default: $FLUXHOOK_KEY)")
    submit = verbs.add_parser("submit", parents=[common], help="submit a prompt")
    submit.add_argument("prompt", help="what to draw")
    submit.add_argument(
        "--model",
        default="flux-dev",
        help="a model from GET /v1/models (default: %(default)s)",
    )
    submit.add_argument("--width", type=int, help="pixels, a multiple of 32 (default: the model's)")
    submit.add_argument(
        "--height", type=int, help="pixels, a multiple of 32 (default: the model's)"
    )
    submit.add_argument(
        "--aspect-ratio", help="e.g. 16:9, for models sized by ratio (ultra, kontext)"
    )
    submit.add_argument("--seed", type=int, help="for a reproducible image (default: random)")
    submit.add_argument(
        "--wait", action="store_true", help="follow the job live and save the image"
    )
    submit.add_argument("--out", type=Path, help="where --wait saves the image")
    jobs = verbs.add_parser("jobs", parents=[common], help="list recent jobs")
    jobs.add_argument("--status", help="only jobs in this status, e.g. Ready")
    jobs.add_argument("--limit", type=int, default=20, help="how many (default: %(default)s)")
    deliveries = verbs.add_parser("deliveries", parents=[common], help="list callback deliveries")
    deliveries.add_argument("--failed", action="store_true", help="only dead letters")
    redeliver = verbs.add_parser("redeliver", parents=[common], help="send a delivery again")
    redeliver.add_argument("id", help="the delivery's id, as `fluxhook deliveries` shows it")
    subscriptions = verbs.add_parser("subscriptions", help="callback subscriptions")
    subscription_verbs = subscriptions.add_subparsers(dest="subscriptions_verb", required=True)
    test = subscription_verbs.add_parser(
        "test", parents=[common], help="send a subscription a signed ping event"
    )
    test.add_argument("id", help="the subscription's id")
    add_listen_verb(verbs, common)


def add_listen_verb(verbs, common) -> None:
    listen = verbs.add_parser(
        "listen",
        parents=[common],
        help="forward the live events, signed, to a local URL",
        description="Follow the tenant's event stream and POST each event to --forward-to as a "
        "subscription would get it (same body, Standard Webhooks headers), signed with the "
        "whsec_ secret printed on the first line. One attempt per event: a handler that is "
        "down or answers 5xx gets a line saying so, not a retry. A dropped stream is resumed "
        "where it stopped. Ctrl-C stops.",
    )
    example = "http://localhost:3000/webhooks"
    listen.add_argument("--forward-to", required=True, metavar="URL", help=f"e.g. {example}")
    listen.add_argument(
        "--events",
        metavar="TYPE,…",
        help=f"comma-separated event types (default: every job event: {', '.join(EVENT_TYPES)})",
    )
    listen.add_argument("--secret", help="sign with this whsec_ secret (default: a new one)")
    listen.add_argument(
        "--from-start", action="store_true", help="first replay every event fluxhook still has"
    )


def connection(args) -> tuple[str, str]:
    """fluxhook's base URL and the API key: `--url`/`--key`, else the environment."""
    port = os.environ.get("PORT", "8000")
    url = args.url or os.environ.get("FLUXHOOK_URL") or f"http://127.0.0.1:{port}"
    key = args.key or os.environ.get("FLUXHOOK_KEY")
    if not key:
        raise ClientError("no API key: pass --key or set FLUXHOOK_KEY")
    return url.rstrip("/"), key


def _client(args) -> httpx.Client:
    url, key = connection(args)
    return httpx.Client(base_url=url, headers={"x-key": key}, timeout=30.0)


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text[:200]
    if isinstance(detail, list):  # a 422: one line per invalid field
        lines = "".join(f"\n{_validation_error(error)}" for error in detail)
        raise RequestFailed(f"fluxhook answered {response.status_code}, invalid input:{lines}")
    raise RequestFailed(f"fluxhook answered {response.status_code}: {detail}")


def _validation_error(error) -> str:
    """`width: Input should be a multiple of 32`, from a FastAPI-shaped `detail` item."""
    if not isinstance(error, dict):
        return str(error)
    where = ".".join(str(part) for part in error.get("loc", []) if part != "body") or "body"
    return f"{where}: {error.get('msg', error)}"


def _request(client: httpx.Client, method: str, path: str, **kwargs) -> httpx.Response:
    try:
        return _checked(client.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        raise RequestFailed(f"could not reach fluxhook at {client.base_url}: {exc}") from exc


def _inputs(args) -> dict:
    """The submit body, refusing (like the API) what the model does not know or take."""
    spec = catalog.get_model(args.model)
    if spec is None:
        close = difflib.get_close_matches(args.model, catalog.MODELS, n=4, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see GET /v1/models"
        raise ClientError(f"unknown model {args.model!r}; {hint}")
    inputs = {"prompt": args.prompt}
    for name in ("width", "height", "aspect_ratio", "seed"):
        if getattr(args, name) is None:
            continue
        if name not in spec.inputs.model_fields:
            option = "--" + name.replace("_", "-")
            raise ClientError(f"{args.model} does not take {option}{_takes_instead(spec)}")
        inputs[name] = getattr(args, name)
    return inputs


def _takes_instead(spec: catalog.ModelSpec) -> str:
    fields = spec.inputs.model_fields
    if "aspect_ratio" in fields:
        return " (it is sized by --aspect-ratio)"
    if "width" in fields:
        return " (it is sized by --width and --height)"
    return ""


def submit(args) -> int:
    inputs = _inputs(args)
    with _client(args) as client:
        job = _request(client, "POST", f"/v1/{args.model}", json=inputs).json()
        print(job["id"], flush=True)
        if not args.wait:
            return 0
        final = _follow(client, job["id"])
        if final["type"] != "job.ready":
            reason = json.dumps(final["data"].get("details"))
            print(f"{final['data']['status']}: {reason}", file=sys.stderr)
            return 1
        return _save_image(client, job["id"], args.out)


def _follow(client: httpx.Client, job_id: str) -> dict:
    """Follow the job's event stream, drawing a progress line, until it settles."""
    tty = sys.stderr.isatty()
    try:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=None) as stream:
            _checked(stream)
            for event in _sse_events(stream.iter_lines()):
                _progress_line(event, tty)
                if event["type"] in TERMINAL_EVENTS:
                    if tty:
                        print(file=sys.stderr)
                    return event
    except httpx.HTTPError as exc:
        raise RequestFailed(f"lost the event stream: {exc}") from exc
    raise RequestFailed("the event stream ended before the job finished")


def _sse_events(lines):
    data = []
    for line in lines:
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield json.loads("\n".join(data))
            data = []


def _progress_line(event: dict, tty: bool) -> None:
    job = event["data"]
    progress = job.get("progress")
    percent = f" {round(progress * 100)}%" if isinstance(progress, int | float) else ""
    line = f"{job['status']}{percent}"
    print(f"\r{line:<40}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


def _save_image(client: httpx.Client, job_id: str, out: Path | None) -> int:
    response = _request(client, "GET", f"/v1/jobs/{job_id}/image")
    extension = EXTENSIONS.get(response.headers.get("content-type", ""), ".img")
    path = out or Path(f"{job_id}{extension}")
    path.write_bytes(response.content)
    print(f"saved {path}", flush=True)
    return 0


def jobs(args) -> int:
    params = {"limit": args.limit} | ({"status": args.status} if args.status else {})
    with _client(args) as client:
        rows = _request(client, "GET", "/v1/jobs", params=params).json()["jobs"]
    print(f"{'ID':<36}  {'MODEL':<22} {'STATUS':<18} CREATED")
    for job in rows:
        print(f"{job['id']}  {job['model']:<22} {job['status']:<18} {job['created_at']}")
    return 0


def deliveries(args) -> int:
    params = {"status": "failed"} if args.failed else {}
    with _client(args) as client:
        rows = _request(client, "GET", "/v1/deliveries", params=params).json()["deliveries"]
    if not rows:
        # On stderr: a script reading stdout sees no rows, a person sees why.
        print("no failed deliveries" if args.failed else "no deliveries yet", file=sys.stderr)
    for d in rows:
        code = d["last_status_code"] or "-"
        print(
            f"{d['id']}  {d['event_type']:<14} {d['status']:<9} attempts={d['attempts']} "
            f"last={code} {d['last_error'] or ''}".rstrip()
        )
    return 0


def redeliver(args) -> int:
    with _client(args) as client:
        delivery = _request(client, "POST", f"/v1/deliveries/{args.id}/redeliver").json()
    print(f"{delivery['id']} is pending again")
    return 0


def subscriptions(args) -> int:
    """`subscriptions test ID`: prints the ping's delivery id, to follow in `deliveries`."""
    with _client(args) as client:
        sent = _request(client, "POST", f"/v1/subscriptions/{args.id}/test").json()
    print(sent["delivery_id"])
    return 0


def listen(args) -> int:
    from service.listen import listen  # it uses this module's errors and connection()

    return listen(args)


def _exit_codes(verb):
    def run(args) -> int:
        try:
            return verb(args)
        except RequestFailed as exc:
            print(f"fluxhook: {exc}", file=sys.stderr)
            return 3

    return run


CLIENT_VERBS = {
    name: _exit_codes(verb)
    for name, verb in {
        "submit": submit,
        "jobs": jobs,
        "deliveries": deliveries,
        "redeliver": redeliver,
        "subscriptions": subscriptions,
        "listen": listen,
    }.items()
}
