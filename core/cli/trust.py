"""``pypod trust``: the keys that may sign images, and the policy rules that name them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config_of, require_root


def register(sub: argparse._SubParsersAction) -> None:
    trust = sub.add_parser("trust", help="manage trusted keys and the image trust policy")
    tsub = trust.add_subparsers(dest="trust_command", metavar="COMMAND")

    p = tsub.add_parser("add", help="trust a public key (PEM, ECDSA P-256) for a scope")
    p.add_argument("keys", nargs="+", metavar="KEY.pem")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--prefix", help="registry or repository prefix the key may sign for "
                                        "(e.g. quay.io/team)")
    where.add_argument("--root", action="store_true",
                       help="trust the key for every image: signatures become required by default")
    p.set_defaults(handler=cmd_add)

    p = tsub.add_parser("list", aliases=["ls"], help="show the policy and the trusted keys")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("--no-legend", action="store_true")
    p.set_defaults(handler=cmd_list)

    p = tsub.add_parser("rm", help="stop trusting keys (KEYID...), or drop a scope's rule (--prefix/--root)")
    p.add_argument("keys", nargs="*", metavar="KEYID")
    p.add_argument("--prefix", help="remove this scope's rule (with no KEYID), or only the given keys from it")
    p.add_argument("--root", action="store_true", help="the default rule instead of a scope")
    p.set_defaults(handler=cmd_rm)
    trust.set_defaults(handler=lambda args: _help(trust))


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(args: argparse.Namespace):
    from ..images import trust

    cfg = config_of(args)
    return trust, trust.Policy.load(cfg.config_dir), trust.KeyStore(cfg.config_dir)


def _locked(args: argparse.Namespace):
    """Serialize policy changes (trust add and rm read, change and rewrite the policy)."""
    from ..lock import locked

    cfg = config_of(args)
    cfg.config_dir.mkdir(parents=True, exist_ok=True)
    return locked(cfg.config_dir / ".trust.lock")


def cmd_add(args: argparse.Namespace) -> int:
    from ..errors import Conflict, UsageError

    require_root("the trust policy")
    with _locked(args):
        trust, policy, store = _load(args)
        scope = None if args.root else trust.normalize_scope(args.prefix)
        rule = policy.default if scope is None else policy.scopes.get(scope)
        where = f"prefix {scope}" if scope else "every image (the default rule)"
        if rule is not None and rule.type == trust.REJECT:
            raise Conflict(f"{where} is set to reject; remove that rule first "
                           f"(pypod trust rm {'--root' if scope is None else '--prefix ' + scope})")
        added = []
        for path in args.keys:
            try:
                pem = Path(path).read_bytes()
            except OSError as e:
                raise UsageError(f"cannot read {path}: {e.strerror}") from None
            added.append(store.add(pem, path))
        if rule is None or rule.type != trust.SIGNED:
            rule = trust.Rule(trust.SIGNED, [])
        for kid in added:
            if kid not in rule.keys:
                rule.keys.append(kid)
        if scope is None:
            policy.default = rule
        else:
            policy.scopes[scope] = rule
        policy.save()
    for kid in added:
        print(f"trusting key {kid} for {where}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .output import print_json, print_table

    trust, policy, store = _load(args)
    rules = [(None, policy.default)] + sorted(policy.scopes.items())
    if args.format == "json":
        keys = []
        for kid in sorted(set(store.ids()) | {k for k in policy.key_refs()}):
            used = [s if s is not None else "(default)" for s, r in rules if kid in r.keys]
            path = Path(kid) if kid.startswith("/") else store.path(kid)
            keys.append({"id": kid, "file": str(path), "present": path.exists(), "scopes": used})
        print_json({"policy_file": str(policy.path), "default": policy.default.to_json(),
                    "scopes": [{"prefix": s, **r.to_json()} for s, r in rules if s is not None],
                    "keys": keys})
        return 0
    rows = []
    for scope, rule in rules:
        name = scope if scope is not None else "(default)"
        if rule.type == trust.SIGNED:
            for kid in rule.keys or ["-"]:
                present = kid == "-" or (Path(kid) if kid.startswith("/") else store.path(kid)).exists()
                rows.append([name, rule.type, kid if present else f"{kid} (missing)"])
        else:
            rows.append([name, rule.type, ""])
    orphans = [k for k in store.ids() if k not in policy.key_refs()]
    for kid in orphans:
        rows.append(["(unused)", "", kid])
    print_table(["SCOPE", "POLICY", "KEY"], rows, legend=not args.no_legend)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from ..errors import NotFound, UsageError

    require_root("the trust policy")
    if args.root and args.prefix:
        raise UsageError("give --prefix or --root, not both")
    if not args.keys and not args.prefix and not args.root:
        raise UsageError("name the keys to remove (KEYID...), or a rule (--prefix PREFIX or --root)")
    notes = []
    with _locked(args):
        trust, policy, store = _load(args)
        before = policy.key_refs()
        scoped = args.root or args.prefix is not None
        scope = None if args.root else trust.normalize_scope(args.prefix) if args.prefix else None
        if scoped and scope is not None and scope not in policy.scopes:
            raise NotFound(f"the trust policy has no rule for prefix {scope}")
        where = f"prefix {scope}" if scope else "the default rule"
        if scoped and not args.keys:  # drop the whole rule
            if scope is None:
                policy.default = trust.Rule(trust.ACCEPT)
                notes.append("the default rule is accept again")
            else:
                del policy.scopes[scope]
                notes.append(f"removed the rule for prefix {scope}")
        else:
            kids = [store.find(k, policy.key_refs()) for k in args.keys]
            targets = [(scope, policy.default if scope is None else policy.scopes[scope])] if scoped else \
                [(None, policy.default)] + list(policy.scopes.items())
            for kid in kids:
                hit = False
                for s, rule in targets:
                    if kid in rule.keys:
                        rule.keys.remove(kid)
                        hit = True
                        if not rule.keys:
                            notes.append(f"{'prefix ' + s if s else 'the default rule'} has no trusted key left: "
                                         f"its images are refused until a key is added "
                                         f"(or the rule removed: pypod trust rm {'--prefix ' + s if s else '--root'})")
                if scoped and not hit:
                    raise NotFound(f"key {kid} is not trusted for {where}")
                if not scoped:
                    store.remove(kid)
                notes.insert(0, f"removed key {kid}" + (f" from {where}" if scoped else ""))
        policy.save()
        for kid in before - policy.key_refs():  # a key file goes once no rule names it
            if kid.startswith("sha256:"):
                store.remove(kid)
    for line in notes:
        print(line)
    return 0
