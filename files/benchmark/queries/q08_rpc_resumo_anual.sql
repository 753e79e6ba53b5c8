-- q08: API report. RPC resumo_anual: count and total area per year and
-- category over the whole table. The float sum is rounded to the square metre
-- so that another summation order does not change the fingerprint.
SELECT r.ano, r.categoria, r.n, round(r.total_area_m2::numeric) AS total_area_m2
FROM public.resumo_anual() AS r
ORDER BY r.ano, r.categoria
