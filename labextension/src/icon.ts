import { LabIcon } from '@jupyterlab/ui-components';

// A chip with a spark: "model on the local accelerator". Uses jp-icon3 so it follows the theme.
const svgstr = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M9 1h2v3H9zM13 1h2v3h-2zM9 20h2v3H9zM13 20h2v3h-2zM1 9h3v2H1zM1 13h3v2H1zM20 9h3v2h-3zM20 13h3v2h-3z"/>
    <path fill-rule="evenodd" d="M5 6a1 1 0 0 1 1-1h12a1 1 0 0 1 1 1v12a1 1 0 0 1-1 1H6a1 1 0 0 1-1-1zm2 1v10h10V7z"/>
    <path d="M12.6 8 9 12.6h2.4L10.8 16l3.8-4.8h-2.5z"/>
  </g>
</svg>`;

export const mlxIcon = new LabIcon({
  name: 'jupyter-mlx-manager:icon',
  svgstr
});
