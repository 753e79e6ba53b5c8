-- q07: API aggregate over the whole table. RPC extensao_por_categoria:
-- bounding extent and count per category (min/max, so exact in any order).
SELECT e.categoria, ST_AsText(e.extensao) AS extensao, e.n
FROM public.extensao_por_categoria() AS e
ORDER BY e.categoria
