-- q02: radius search through the API. RPC geometrias_no_raio: features within
-- 5 km (geodesic) of Praça da Sé, São Paulo, with their distance rounded to
-- the centimetre. The RPC prefilters with the GiST index before the exact test.
SELECT g.id,
       g.nome,
       g.categoria,
       round(ST_Distance(g.geom::geography,
                         ST_SetSRID(ST_MakePoint(-46.6339, -23.5505), 4326)::geography)::numeric,
             2) AS distancia_m
FROM public.geometrias_no_raio(-46.6339, -23.5505, 5000) AS g
ORDER BY g.id
