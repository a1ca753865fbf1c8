/* The functions of spectral_passes.c for one real type: included there with `real` and `NAME`
 * defined (no include guard on purpose). See probneural/data/spectral_passes.py for each
 * function's contract. */

/* dst[b, i, :] = first[i, :] * src[b, first_rows[i], :] (+ second[i, :] * src[b, second_rows[i], :]). */
KERNEL void NAME(gathered_products)(int64_t batch, int64_t rows, int64_t n, const real *restrict first,
                                    const int64_t *restrict first_rows, const real *restrict second,
                                    const int64_t *restrict second_rows, const real *restrict src, int64_t src_batch,
                                    real *restrict dst, int64_t dst_batch) {
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < rows; ++i) {
            const real *f = first + 2 * i * n, *x = src + 2 * (b * src_batch + first_rows[i] * n);
            real *out = dst + 2 * (b * dst_batch + i * n);
            if (second == NULL) {
                for (int64_t j = 0; j < n; ++j) {
                    real fr = f[2 * j], fi = f[2 * j + 1], xr = x[2 * j], xi = x[2 * j + 1];
                    out[2 * j] = fr * xr - fi * xi;
                    out[2 * j + 1] = fr * xi + fi * xr;
                }
            } else {
                const real *g = second + 2 * i * n, *y = src + 2 * (b * src_batch + second_rows[i] * n);
                for (int64_t j = 0; j < n; ++j) {
                    real fr = f[2 * j], fi = f[2 * j + 1], xr = x[2 * j], xi = x[2 * j + 1];
                    real gr = g[2 * j], gi = g[2 * j + 1], yr = y[2 * j], yi = y[2 * j + 1];
                    out[2 * j] = (fr * xr - fi * xi) + (gr * yr - gi * yi);
                    out[2 * j + 1] = (fr * xi + fi * xr) + (gr * yi + gi * yr);
                }
            }
        }
    }
}

/* dst[b, j, columns[i]] = src[b, i, j], conjugated for i >= conjugate_from (i < lines, j < n).
 * Writes run along the grid's rows, which are not padded (a column of them falls into a few cache
 * sets); the reads, one element from each line, come back to the same cache lines for the next j. */
KERNEL void NAME(lines_to_grid)(int64_t batch, int64_t lines, int64_t n, const real *restrict src, int64_t src_batch,
                                int64_t src_row, const int64_t *restrict columns, int64_t conjugate_from,
                                real *restrict dst, int64_t dst_batch, int64_t dst_row) {
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t j = 0; j < n; ++j) {
            const real *x = src + 2 * (b * src_batch + j);
            real *out = dst + 2 * (b * dst_batch + j * dst_row);
            for (int64_t i = 0; i < lines; ++i) {
                out[2 * columns[i]] = x[2 * i * src_row];
                out[2 * columns[i] + 1] = i < conjugate_from ? x[2 * i * src_row + 1] : -x[2 * i * src_row + 1];
            }
        }
    }
}

/* dst[b, i, j] = src[b, j, columns[i]], conjugated for i >= conjugate_from (i < lines, j < n).
 * Writes run along the lines; the reads, one element from each grid row, come back to the same cache
 * lines for the next line. */
KERNEL void NAME(grid_to_lines)(int64_t batch, int64_t lines, int64_t n, const real *restrict src, int64_t src_batch,
                                int64_t src_row, const int64_t *restrict columns, int64_t conjugate_from,
                                real *restrict dst, int64_t dst_batch, int64_t dst_row) {
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t i = 0; i < lines; ++i) {
            const real *x = src + 2 * (b * src_batch + columns[i]);
            real *out = dst + 2 * (b * dst_batch + i * dst_row);
            for (int64_t j = 0; j < n; ++j) {
                out[2 * j] = x[2 * j * src_row];
                out[2 * j + 1] = i < conjugate_from ? x[2 * j * src_row + 1] : -x[2 * j * src_row + 1];
            }
        }
    }
}

/* z[b, :] = z[b, :]² for `n` contiguous elements per sample; speed[b] = max |Re z| + |Im z| before
 * squaring, NaN if any term is NaN (speed may be NULL). Row by row of `row` elements, so that the
 * speed's scan and the square read each row from cache once it is loaded. */
KERNEL void NAME(square_in_place)(int64_t batch, int64_t n, int64_t row, real *restrict z, real *restrict speed) {
    for (int64_t b = 0; b < batch; ++b) {
        real largest = 0;
        int nan = 0;
        for (int64_t start = 0; start < n; start += row) {
            real *x = z + 2 * (b * n + start);
            int64_t end = 2 * (start + row < n ? row : n - start);
            if (speed != NULL) {
                for (int64_t j = 0; j < end; j += 2) {
                    real size = (x[j] < 0 ? -x[j] : x[j]) + (x[j + 1] < 0 ? -x[j + 1] : x[j + 1]);
                    nan |= size != size;
                    largest = size > largest ? size : largest;
                }
            }
            for (int64_t j = 0; j < end; j += 2) {
                real re = x[j], im = x[j + 1];
                x[j] = re * re - im * im;
                x[j + 1] = re * im + im * re;
            }
        }
        if (speed != NULL) speed[b] = nan ? (real)NAN : largest;
    }
}

/* One RK3–Crank–Nicolson stage in place on w (batch, rows, n), rows = all rows of the half
 * spectrum: w = damping w (+ forcing), and on the first `advected_rows` rows also
 * + factor (advection + ratio · previous). forcing and previous may be NULL. Row by row: each row is
 * read from memory once and its few loops run over it in cache. */
KERNEL void NAME(rk3_stage)(int64_t batch, int64_t rows, int64_t advected_rows, int64_t n, real *restrict w,
                            const real *restrict damping, int64_t damping_batch, const real *restrict forcing,
                            int64_t forcing_batch, const real *restrict factor, int64_t factor_batch,
                            const real *restrict advection, int64_t advection_batch, const real *restrict previous,
                            int64_t previous_batch, real ratio) {
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t r = 0; r < rows; ++r) {
            real *x = w + 2 * (b * rows + r) * n;
            const real *d = damping + 2 * (b * damping_batch + r * n);
            for (int64_t k = 0; k < 2 * n; k += 2) {
                real xr = x[k], xi = x[k + 1];
                x[k] = d[k] * xr - d[k + 1] * xi;
                x[k + 1] = d[k] * xi + d[k + 1] * xr;
            }
            if (forcing != NULL) {
                const real *f = forcing + 2 * (b * forcing_batch + r * n);
                for (int64_t k = 0; k < 2 * n; ++k) x[k] = f[k] + x[k];
            }
            if (r >= advected_rows) continue;
            const real *c = factor + 2 * (b * factor_batch + r * n), *a = advection + 2 * (b * advection_batch + r * n);
            if (previous == NULL) {
                for (int64_t k = 0; k < 2 * n; k += 2) {
                    x[k] = x[k] + (c[k] * a[k] - c[k + 1] * a[k + 1]);
                    x[k + 1] = x[k + 1] + (c[k] * a[k + 1] + c[k + 1] * a[k]);
                }
            } else {
                const real *p = previous + 2 * (b * previous_batch + r * n);
                for (int64_t k = 0; k < 2 * n; k += 2) {
                    real sr = a[k] + ratio * p[k], si = a[k + 1] + ratio * p[k + 1];
                    x[k] = x[k] + (c[k] * sr - c[k + 1] * si);
                    x[k + 1] = x[k + 1] + (c[k] * si + c[k + 1] * sr);
                }
            }
        }
    }
}
