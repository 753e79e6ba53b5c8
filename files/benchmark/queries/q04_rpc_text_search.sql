-- q04: API full-text search. RPC search_geometrias (Portuguese websearch on
-- nome and descricao, GIN index) for 'parque' inside a 0.6 x 0.6 degree box
-- centred on São Paulo. max_results stays above the number of matches, so the
-- set returned does not hinge on the function's cut-off.
SELECT s.id, s.nome, s.categoria
FROM public.search_geometrias('parque', ST_MakeEnvelope(-46.9333, -23.8505, -46.3333, -23.2505, 4326), 50) AS s
ORDER BY s.id
