import { defineConfig } from 'vite';

// The gateway serves web/dist on its own origin (gateway.web.root). The bundle holds no
// configuration: the page reads /app-config.json at start.
export default defineConfig({
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: true,
    target: 'es2022',
  },
});
