"""`swiftreg serve`: the registry over HTTP, a thin surface over `registry.service.Registry`.

Three dialects on one app (app.py assembles them): swiftreg's own JSON API under /api/v1/ (api_v1.py,
jobs.py), the Hugging Face Hub download protocol (hf.py, docs/HF_PROTOCOL.md) and
ModelScope's read API (modelscope.py, docs/MODELSCOPE.md). Shared by them: errors.py (error
shapes), auth.py (tokens, scopes, namespaces), schemas.py (request and response models), lookup.py
(the hub dialects' revision lookup) and responses.py; resumable uploads are registry/store/uploads.py.

The /api/v1 protocol (errors are JSON `{"error": {"code", "message"}}` with the matching status):

    GET    /healthz  (also /healthz/ready)               readiness: {"ok", "database", "store", "disk"}, each
                                                         {"ok", ...}; 503 + Retry-After while one is down
    GET    /healthz/live                                 liveness: {"ok": true} while the process serves
    GET    /api/v1/repos?namespace=NS                    [repo]                              read
    GET    /api/v1/repos/{ns}/{name}/revisions           [revision without manifest]         read
    GET    /api/v1/repos/{ns}/{name}/refs/{ref}?format=  revision + "files" of that format   read
    POST   /api/v1/blobs/missing {"digests": [...]}      {"missing": [...]}                  write (any namespace)
    HEAD   /api/v1/uploads/{digest}                      Upload-Offset: bytes held (of this token's namespaces'
                                                         upload: another namespace's is never seen); Upload-Complete
    PATCH  /api/v1/uploads/{digest}                      body = bytes from Upload-Offset (header, must equal the
                                                         server's), Upload-Length = total size; 204 + new
                                                         Upload-Offset, or 201 {"digest","size"} once complete and
                                                         verified; 409 {"offset"} on an offset mismatch; 422 when
                                                         the bytes do not hash to the digest (nothing stored); 413
                                                         upload_quota past the namespace's unfinished bytes
                                                         (--max-partial-bytes); 507 insufficient_storage when the
                                                         blob cannot fit the disk. Idle uploads expire (--upload-ttl)
    GET    /api/v1/blobs/{digest}                        the bytes; Range supported               read
    POST   /api/v1/repos/{ns}/{name}/revisions           {"manifest", "kind", "tag", "force", "message",
                                                          "base_model", "parents"} -> 201/200 push result;
                                                         409 blobs_missing {"missing": [...]}       write(ns)
    PUT    /api/v1/repos/{ns}/{name}/tags/{tag}          {"ref", "force"} -> revision               write(ns)
    DELETE /api/v1/repos/{ns}/{name}/tags/{tag}                                                     write(ns)
    DELETE /api/v1/repos/{ns}/{name}/refs/{ref}?force=                                              write(ns)
    POST   /api/v1/gc {"grace_seconds", "dry_run"}       gc result (store-wide)            admin, no namespace limit
    GET    /api/v1/stats                                 {"bytes_received", "blobs_stored", ...}    admin (a namespace
                                                         admin: {"namespaces", ...} of its namespaces only)
    POST   /api/v1/jobs {"kind", "params", "idempotency_key"}  201 job (200: the key's existing job); 409
                                                         job_conflict (key reused, other params)  write(target ns),
                                                                                                  read(inputs' ns)
    GET    /api/v1/jobs?status=&kind=&limit=             [job], newest first (scoped tokens: theirs) read
    GET    /api/v1/jobs/{id}                             job: status, attempts, worker, result, log   read(job ns)
    POST   /api/v1/jobs/{id}/cancel                      job; 409 job_state when already finished     write(job ns)
    GET    /api/v1/repos/{ns}/{name}/refs/{ref}/validations?check=   [recorded check], newest first  read(ns)

Authentication: `Authorization: Bearer <token>` (swiftreg token create). Reads need a read token
unless the server runs with --anonymous-read; then any valid token reads what no token reads.
Job idempotency keys are unique per namespace.

Any route, in every dialect's error shape: 503 `unavailable` with Retry-After while the database, the
blob store or the disk is down, 507 `insufficient_storage` when the disk is full (health.py).
"""
