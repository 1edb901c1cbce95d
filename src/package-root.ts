// The package's root directory (package.json, native/) as a file URL ending in '/'. This module sits at the top of
// src/ (tsx), dist/ (tsc) and, inlined, in the bundle's files, which scripts/bundle.mjs also writes to the top of
// dist/: from each, one `../` is the root.
export const PACKAGE_ROOT: URL = new URL('../', import.meta.url)
