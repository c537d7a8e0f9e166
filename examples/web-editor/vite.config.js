// The bundle is written into the server crate, which embeds it at build time
// (crates/yrelay-server/build.rs): a fresh clone runs the demo without Node.
// Assets are served under /_demo/ (see crates/yrelay-server/src/demo.rs).
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/_demo/',
  build: {
    outDir: '../../crates/yrelay-server/assets/web-editor',
    emptyOutDir: true,
    // Stable, reviewable output: no inline source maps, no build-time clock in the files.
    sourcemap: false,
    chunkSizeWarningLimit: 2000
  }
})
