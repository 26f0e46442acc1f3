from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from devenv.cli.commands._common import project_root
from devenv.cli.output import Column, out, print_json, print_rolled, print_table, size, warn
from devenv.client import Client, EngineNotRunning
from devenv.core.paths import StateDir
from devenv.data.snapshots import NAME, SnapshotStore
from devenv.wire import to_json


def run(args: argparse.Namespace) -> int:
    root = project_root(args)
    store = SnapshotStore(StateDir(root).base / "snapshots")
    action = args.action
    if action in ("save", "restore"):
        client = Client(root)
        if not client.running():
            raise EngineNotRunning(root)
        snap = client.snapshot_save(args.name) if action == "save" \
            else client.snapshot_restore(args.name)
        verb = "saved" if action == "save" else "restored"
        out.print(f"{verb} snapshot {snap.name}: {', '.join(snap.services)} "
                  f"({size(snap.size_bytes)})")
        print_rolled(snap.rolled)
    elif action == "list":
        found, damaged = store.scan()
        for path, why in damaged:
            fix = f"`devenv snapshot delete {path.name}`" if NAME.match(path.name) \
                else "remove the folder"
            warn(f"skipped {path.relative_to(root)}: {why} ({fix} if it is not needed)")
        snaps = [s.summary() for s in found]
        if args.json:
            print_json(to_json(snaps))
            return 0
        if not snaps:
            out.print("no snapshots yet; take one with `devenv snapshot save NAME`")
            return 0
        columns = [Column("NAME"), Column("CREATED"), Column("SIZE"),
                   Column("SERVICES", wrap=True), Column("DATASETS", wrap=True)]
        print_table(columns, [
            [escape(snap.name + (" (auto)" if snap.automatic else "")), escape(snap.created),
             size(snap.size_bytes),
             escape(", ".join(f"{n} ({v['kind']} {v['version']})"
                              for n, v in snap.services.items())),
             escape(", ".join(snap.datasets) or "-")]
            for snap in snaps])
    elif action == "delete":
        store.delete(args.name)
        out.print(f"deleted snapshot {args.name}")
    elif action == "export":
        written = store.export(args.name, Path(args.output))
        out.print(f"exported {args.name} to {written} ({size(written.stat().st_size)})")
    else:
        imported = store.import_(Path(args.file), args.name)
        out.print(f"imported snapshot {imported.name} ({size(imported.size)}); restore it "
                  f"with `devenv snapshot restore {imported.name}`")
    return 0
