"""Which blobs a namespace-scoped token may reach: the server's access rule for digest-addressed routes."""
from __future__ import annotations

from sqlalchemy import select

from ..db.models import AdapterRecord, BaseModelRecord, DerivedRecord, RevisionRecord
from .core import RegistryCore


class AccessMixin(RegistryCore):
    """blob_in_namespaces."""

    def blob_in_namespaces(self, digest: str, namespaces: list[str]) -> bool:
        """Whether a revision (or a conversion of one) in these namespaces names the blob.

        Blob routes are addressed by digest alone; a token scoped to some namespaces may read, or
        build a revision on, only the blobs its namespaces already hold, so knowing a digest from
        elsewhere grants nothing. Revisions are never deleted, so a yes is remembered for good.
        """
        wanted = sorted(set(namespaces))
        key = (digest, tuple(wanted))
        if key in self._visible:
            return True
        with self.db.read() as session:
            for model, column in ((AdapterRecord, RevisionRecord.adapter_id),
                                  (BaseModelRecord, RevisionRecord.base_model_id)):
                rows = session.execute(
                    select(RevisionRecord.id, RevisionRecord.manifest).join(model, column == model.id)
                    .where(model.namespace.in_(wanted))).all()
                ids = [row.id for row in rows]
                manifests = [row.manifest for row in rows]
                for start in range(0, len(ids), 500):
                    manifests += session.scalars(select(DerivedRecord.manifest).where(
                        DerivedRecord.revision_id.in_(ids[start:start + 500]))).all()
                if any(f.get("sha256") == digest for m in manifests for f in m.get("files", ())):
                    if len(self._visible) > 65536:
                        self._visible.clear()
                    self._visible.add(key)
                    return True
        return False
