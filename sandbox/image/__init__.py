"""OCI images: references, the registry transport (skopeo), the content-addressed store and the layer unpacker.

    reference.py  REF = [TRANSPORT:]NAME[:TAG|@sha256:DIGEST] parsed and normalised (Docker's grammar)
    skopeo.py     the one place that runs skopeo (login/logout, inspect, copy): podman's own stack
    blob.py       streaming sha256 verification and decompression (gzip, zstd, plain tar by magic)
    tarstream.py  a bounded tar header parser (ustar, GNU long names, PAX) that never buffers a hostile size
    unpack.py     creates each entry inside a layer root by fd (no symlink followed, no '..', overlay whiteouts)
    store.py      /var/lib/sbx: verified manifests/configs, layers unpacked once, refs, atomic renames, GC
    layered.py    reads a path through a stack of unpacked layers (whiteouts and opaque dirs applied)
    config.py     the image config with Docker's semantics (Env, Entrypoint+Cmd, WorkingDir, User, ...)
    passwd.py     /etc/passwd and /etc/group of the IMAGE (runc's GetExecUser rules), never the host's
"""
