-- q10: GeoJSON export. One FeatureCollection of the features intersecting a
-- 0.3 x 0.3 degree box centred on Rio de Janeiro, built in the database
-- (json_agg of ST_AsGeoJSON at 6 decimals, about 0.1 m), in id order.
SELECT json_build_object(
           'type', 'FeatureCollection',
           'features', coalesce(json_agg(
               json_build_object(
                   'type', 'Feature',
                   'id', g.id,
                   'geometry', ST_AsGeoJSON(g.geom, 6)::json,
                   'properties', json_build_object('nome', g.nome, 'categoria', g.categoria,
                                                   'area_m2', g.area_m2))
               ORDER BY g.id), '[]'::json)
       ) AS feature_collection
FROM public.geometrias AS g
WHERE ST_Intersects(g.geom, ST_MakeEnvelope(-43.3229, -23.0568, -43.0229, -22.7568, 4326))
