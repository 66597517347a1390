"""`siglip-runtime index` / `search`: an image collection embedded into a resumable index and searched.

`sources` (what to embed) -> `embedder` (decode ahead, embed) -> `shards` (committed by sha256)
-> `store` (FAISS) ; `build` runs it here or on Ray Data (`on_ray`); `search` queries it.
Needs the [index] extra for FAISS, Ray and pyarrow (imported where used)."""
